#!/usr/bin/env python3
"""Checks account_relay.py in front of moto's server: S3, SQS and SNS across
two accounts (111111111111 owns the bucket, queue and topic; 222222222222
writes), judged by their resource policies as AWS does, and a smoke check of
the DynamoDB Streams behaviour (a DescribeStream from another account is
refused without a policy; the roll-over endpoint answers).

Starts its own moto (port 24571) and relay (24570) from the virtualenv this
runs in, and stops both on exit, failures included:

    target/local-stack-cache/moto-5.2.5/bin/python deploy/local/account_relay_test.py

RELAY_TEST_PORT moves the relay (moto takes the next port).
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
RELAY_PORT = int(os.environ.get("RELAY_TEST_PORT", "24570"))
MOTO_PORT = RELAY_PORT + 1
ENDPOINT = f"http://127.0.0.1:{RELAY_PORT}"
OWNER, WRITER = "111111111111", "222222222222"
WRITER_ROLE = f"arn:aws:iam::{WRITER}:role/kcld"
REGION = "us-east-1"
PROCESSES = []
LOGS = tempfile.mkdtemp(prefix="account-relay-test-")


def stop_all():
    for proc in reversed(PROCESSES):
        if proc.poll() is None:
            # Each was started in a session of its own: end that group.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    PROCESSES.clear()


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port, name, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not port_free(port):
            return
        if any(p.poll() is not None for p in PROCESSES):
            break
        time.sleep(0.2)
    raise SystemExit(f"{name} did not start on port {port}; logs in {LOGS}")


def start(name, argv, port):
    log = open(os.path.join(LOGS, f"{name}.log"), "wb")
    PROCESSES.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True))
    wait_port(port, name)


def client(service, account):
    return boto3.client(service, endpoint_url=ENDPOINT, region_name=REGION, aws_access_key_id=account,
                        aws_secret_access_key="secret",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def refused(call, code, *needles, status=None):
    """The ClientError `call` must raise: its code, words of its message."""
    try:
        call()
    except ClientError as e:
        error = e.response["Error"]
        assert error.get("Code") == code, f"expected {code}, got {error}"
        for needle in needles:
            assert needle in error.get("Message", ""), f"{needle!r} not in {error}"
        if status:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == status, e.response["ResponseMetadata"]
        return error
    raise AssertionError(f"expected {code}, the call passed")


def raw_call(method, path, account, service, body=b"", headers=None):
    """A request signed (in form only) as `account`: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", RELAY_PORT, timeout=30)
    sent = {"Authorization": f"AWS4-HMAC-SHA256 Credential={account}/20260101/{REGION}/{service}/aws4_request, "
                             "SignedHeaders=host, Signature=0",
            "Content-Length": str(len(body)), **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, dict((k.lower(), v) for k, v in response.getheaders()), response.read()
    finally:
        conn.close()


def policy(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(actions, resources, principal=WRITER_ROLE):
    return {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions, "Resource": resources}


def grants_of(acl):
    return {(g["Grantee"].get("ID") or g["Grantee"].get("URI"), g["Permission"]) for g in acl["Grants"]}


def test_s3():
    owner, writer = client("s3", OWNER), client("s3", WRITER)
    bucket = "kcld-sink"
    owner.create_bucket(Bucket=bucket)
    owner_id = owner.list_buckets()["Owner"]["ID"]
    writer_id = writer.list_buckets()["Owner"]["ID"]
    assert owner_id != writer_id, "canonical ids must differ per account"
    refused(lambda: writer.create_bucket(Bucket=bucket), "BucketAlreadyExists")

    # No bucket policy: another account's calls are refused.
    refused(lambda: writer.put_object(Bucket=bucket, Key="a", Body=b"x"), "AccessDenied",
            "s3:PutObject", f'"arn:aws:s3:::{bucket}/a"', status=403)
    refused(lambda: writer.list_objects_v2(Bucket=bucket), "AccessDenied", "s3:ListBucket", f"arn:aws:s3:::{bucket}")
    refused(lambda: writer.get_bucket_location(Bucket=bucket), "AccessDenied", "s3:GetBucketLocation")
    status, headers, body = raw_call("PUT", f"/{bucket}/raw", WRITER, "s3", b"x")
    assert status == 403 and headers["content-type"] == "application/xml", (status, headers)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>User: '
                           b"arn:aws:sts::222222222222:assumed-role/caller is not authorized to perform: s3:PutObject "
                           b"on resource: \"arn:aws:s3:::kcld-sink/raw\" because no resource-based policy allows "
                           b"the s3:PutObject action</Message><RequestId>"), body
    # A bucket's policy is its owner's alone.
    write_policy = policy(allow(["s3:PutObject", "s3:PutObjectAcl"], f"arn:aws:s3:::{bucket}/*"))
    refused(lambda: writer.put_bucket_policy(Bucket=bucket, Policy=write_policy), "AccessDenied", "s3:PutBucketPolicy")
    owner.put_bucket_policy(Bucket=bucket, Policy=write_policy)
    refused(lambda: writer.get_bucket_policy(Bucket=bucket), "AccessDenied", "s3:GetBucketPolicy")
    refused(lambda: writer.delete_bucket_policy(Bucket=bucket), "AccessDenied", "s3:DeleteBucketPolicy")

    # With the policy: written with the bucket owner's full control.
    writer.put_object(Bucket=bucket, Key="2026/12/07/obj", Body=b"hello", ACL="bucket-owner-full-control")
    assert owner.get_object(Bucket=bucket, Key="2026/12/07/obj")["Body"].read() == b"hello"
    acl = owner.get_object_acl(Bucket=bucket, Key="2026/12/07/obj")
    assert acl["Owner"]["ID"] == writer_id, acl
    assert grants_of(acl) == {(writer_id, "FULL_CONTROL"), (owner_id, "FULL_CONTROL")}, acl
    owner_acl = owner.get_bucket_acl(Bucket=bucket)
    assert owner_acl["Owner"]["ID"] == owner_id, owner_acl
    # The writer owns it (ObjectWriter): its ACL lets the writer read it
    # without the bucket policy; objects of the bucket owner's need it.
    assert writer.get_object(Bucket=bucket, Key="2026/12/07/obj")["Body"].read() == b"hello"
    owner.put_object(Bucket=bucket, Key="owners", Body=b"o")
    refused(lambda: writer.get_object(Bucket=bucket, Key="owners"), "AccessDenied", "s3:GetObject")

    # Written without an ACL, the object is the writer's: its bucket's
    # owner cannot read it (AWS's ObjectWriter ownership); the writer can.
    writer.put_object(Bucket=bucket, Key="mine", Body=b"theirs")
    refused(lambda: owner.get_object(Bucket=bucket, Key="mine"), "AccessDenied", status=403)
    assert writer.get_object(Bucket=bucket, Key="mine")["Body"].read() == b"theirs"
    acl = writer.get_object_acl(Bucket=bucket, Key="mine")
    assert acl["Owner"]["ID"] == writer_id and grants_of(acl) == {(writer_id, "FULL_CONTROL")}, acl

    # A policy without s3:PutObjectAcl: a PutObject setting an ACL is refused.
    owner.put_bucket_policy(Bucket=bucket, Policy=policy(allow("s3:PutObject", f"arn:aws:s3:::{bucket}/*")))
    refused(lambda: writer.put_object(Bucket=bucket, Key="b", Body=b"x", ACL="bucket-owner-full-control"),
            "AccessDenied", "s3:PutObjectAcl", f"arn:aws:s3:::{bucket}/b")
    writer.put_object(Bucket=bucket, Key="b", Body=b"x")

    # Multipart upload across accounts, with the policy the S3 sink asks for.
    owner.put_bucket_policy(Bucket=bucket, Policy=policy(allow(
        ["s3:PutObject", "s3:PutObjectAcl", "s3:AbortMultipartUpload", "s3:ListBucketMultipartUploads",
         "s3:GetBucketLocation", "s3:ListBucket"], [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"])))
    assert writer.get_bucket_location(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert {o["Key"] for o in writer.list_objects_v2(Bucket=bucket)["Contents"]} >= {"2026/12/07/obj", "mine", "b"}
    upload = writer.create_multipart_upload(Bucket=bucket, Key="big", ACL="bucket-owner-full-control")["UploadId"]
    assert [u["UploadId"] for u in writer.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]
    first = os.urandom(5 * 1024 * 1024)
    parts = [writer.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n, Body=data)["ETag"]
             for n, data in ((1, first), (2, b"tail"))]
    writer.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n + 1, "ETag": etag} for n, etag in enumerate(parts)]})
    assert owner.get_object(Bucket=bucket, Key="big")["Body"].read() == first + b"tail"
    acl = owner.get_object_acl(Bucket=bucket, Key="big")
    assert (owner_id, "FULL_CONTROL") in grants_of(acl) and acl["Owner"]["ID"] == writer_id, acl
    aborted = writer.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    writer.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=aborted)

    # Deleting needs s3:DeleteObject; the owner deletes what it likes.
    refused(lambda: writer.delete_object(Bucket=bucket, Key="big"), "AccessDenied", "s3:DeleteObject")
    owner.delete_object(Bucket=bucket, Key="big")
    refused(lambda: owner.get_object(Bucket=bucket, Key="big"), "NoSuchKey")

    # Bucket owner enforced: ACLs off, but bucket-owner-full-control passes;
    # the bucket's owner owns every object.
    enforced = "kcld-enforced"
    owner.create_bucket(Bucket=enforced)
    refused(lambda: writer.put_bucket_ownership_controls(Bucket=enforced, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}), "AccessDenied", "s3:PutBucketOwnershipControls")
    owner.put_bucket_ownership_controls(Bucket=enforced, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    owner.put_bucket_policy(Bucket=enforced, Policy=policy(allow(["s3:PutObject", "s3:PutObjectAcl"],
                                                                 f"arn:aws:s3:::{enforced}/*")))
    writer.put_object(Bucket=enforced, Key="k", Body=b"x", ACL="bucket-owner-full-control")
    writer.put_object(Bucket=enforced, Key="plain", Body=b"y")
    refused(lambda: writer.put_object(Bucket=enforced, Key="p", Body=b"x", ACL="private"),
            "AccessControlListNotSupported", "The bucket does not allow ACLs", status=400)
    refused(lambda: owner.put_object(Bucket=enforced, Key="p", Body=b"x", ACL="public-read"),
            "AccessControlListNotSupported")
    assert owner.get_object(Bucket=enforced, Key="plain")["Body"].read() == b"y"
    acl = owner.get_object_acl(Bucket=enforced, Key="k")
    assert acl["Owner"]["ID"] == owner_id and grants_of(acl) == {(owner_id, "FULL_CONTROL")}, acl
    print("s3: ok")


def test_sqs():
    owner, writer = client("sqs", OWNER), client("sqs", WRITER)
    url = owner.create_queue(QueueName="kcld-failures")["QueueUrl"]
    assert url == f"{ENDPOINT}/{OWNER}/kcld-failures", url
    arn = owner.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == f"arn:aws:sqs:{REGION}:{OWNER}:kcld-failures", arn

    refused(lambda: writer.send_message(QueueUrl=url, MessageBody="x"), "AccessDenied",
            "sqs:sendmessage", arn, status=403)
    refused(lambda: writer.get_queue_url(QueueName="kcld-failures", QueueOwnerAWSAccountId=OWNER), "AccessDenied")
    status, headers, body = raw_call("POST", "/", WRITER, "sqs", json.dumps({"QueueUrl": url, "MessageBody": "x"}).encode(),
                                     {"X-Amz-Target": "AmazonSQS.SendMessage",
                                      "Content-Type": "application/x-amz-json-1.0"})
    assert status == 403 and headers["x-amzn-query-error"] == "AccessDenied;Sender", (status, headers)
    assert json.loads(body)["__type"] == "com.amazonaws.sqs#AccessDenied", body

    queue_policy = policy(allow(["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"], arn))
    refused(lambda: writer.set_queue_attributes(QueueUrl=url, Attributes={"Policy": queue_policy}), "AccessDenied")
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": queue_policy})
    assert writer.get_queue_url(QueueName="kcld-failures", QueueOwnerAWSAccountId=OWNER)["QueueUrl"] == url
    writer.send_message(QueueUrl=url, MessageBody="one")
    writer.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "two"}])
    # The query protocol's form body is judged the same way.
    form = urllib.parse.urlencode({"Action": "SendMessage", "QueueUrl": url, "MessageBody": "three"}).encode()
    status, _, body = raw_call("POST", "/", WRITER, "sqs", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    form = urllib.parse.urlencode({"Action": "ReceiveMessage", "QueueUrl": url}).encode()
    status, headers, body = raw_call("POST", "/", WRITER, "sqs", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body, (status, body)
    refused(lambda: writer.receive_message(QueueUrl=url), "AccessDenied", "sqs:receivemessage")

    got = []
    for _ in range(5):
        got += [m["Body"] for m in owner.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])]
        if len(got) >= 3:
            break
    assert sorted(got) == ["one", "three", "two"], got
    print("sqs: ok")


def receive_all(sqs, url, wanted, tries=10):
    got = []
    for _ in range(tries):
        got += [json.loads(m["Body"])["Message"]
                for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])]
        if len(got) >= wanted:
            break
    return sorted(got)


def test_sns():
    owner, writer = client("sns", OWNER), client("sns", WRITER)
    owner_sqs, writer_sqs = client("sqs", OWNER), client("sqs", WRITER)
    topic = owner.create_topic(Name="kcld-failures")["TopicArn"]
    default = json.loads(owner.get_topic_attributes(TopicArn=topic)["Attributes"]["Policy"])
    refused(lambda: writer.publish(TopicArn=topic, Message="x"), "AuthorizationError", "SNS:Publish", topic, status=403)
    status, headers, body = raw_call("POST", "/", WRITER, "sns", urllib.parse.urlencode(
        {"Action": "Publish", "TopicArn": topic, "Message": "x"}).encode(), {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and b"<Type>Sender</Type><Code>AuthorizationError</Code>" in body, (status, body)

    # SNS to SQS in one account: moto delivers.
    url = owner_sqs.create_queue(QueueName="kcld-topic-copy")["QueueUrl"]
    queue_arn = owner_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    owner.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    owner.publish(TopicArn=topic, Message="from the owner")

    default["Statement"].append(allow("SNS:Publish", topic))
    refused(lambda: writer.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=json.dumps(default)),
            "AuthorizationError", "SNS:SetTopicAttributes")
    owner.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=json.dumps(default))
    writer.publish(TopicArn=topic, Message="from the writer")
    refused(lambda: writer.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn), "AuthorizationError", "SNS:Subscribe")
    assert receive_all(owner_sqs, url, 2) == ["from the owner", "from the writer"]

    # SNS to a queue of another account: moto looks the queue up in the
    # topic's account, so nothing arrives (reported, not asserted).
    other = writer_sqs.create_queue(QueueName="kcld-other-account")["QueueUrl"]
    other_arn = writer_sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    owner.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=other_arn)
    try:
        owner.publish(TopicArn=topic, Message="across")
        crossed = receive_all(writer_sqs, other, 1, tries=2)
    except ClientError as e:
        crossed = f"publish failed: {e}"
    print(f"sns: ok (delivery to another account's queue: {crossed or 'nothing arrives'})")


def test_dynamodb_streams():
    owner, reader = client("dynamodb", OWNER), client("dynamodbstreams", WRITER)
    table = owner.create_table(TableName="kcld-source", BillingMode="PAY_PER_REQUEST",
                               AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                               KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                               StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    stream = table["TableDescription"]["LatestStreamArn"]
    refused(lambda: reader.describe_stream(StreamArn=stream), "AccessDeniedException", "dynamodb:DescribeStream", stream)
    assert client("dynamodbstreams", OWNER).describe_stream(StreamArn=stream)["StreamDescription"]["StreamArn"] == stream
    status, _, body = raw_call("POST", "/_relay/rollover", OWNER, "dynamodb", json.dumps({"StreamArn": stream}).encode())
    assert status == 200 and {"Closed", "Opened"} <= set(json.loads(body)), body
    print("dynamodb streams: ok")


def main():
    for port in (RELAY_PORT, MOTO_PORT):
        if not port_free(port):
            raise SystemExit(f"port {port} is taken: set RELAY_TEST_PORT")
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    start("moto", [os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)], MOTO_PORT)
    start("relay", [sys.executable, os.path.join(HERE, "account_relay.py"), "--listen", f"127.0.0.1:{RELAY_PORT}",
                    "--upstream", f"http://127.0.0.1:{MOTO_PORT}"], RELAY_PORT)
    try:
        test_s3()
        test_sqs()
        test_sns()
        test_dynamodb_streams()
    except BaseException:
        print(f"logs: {LOGS}", file=sys.stderr)
        raise
    stop_all()
    shutil.rmtree(LOGS, ignore_errors=True)
    print("account relay: all checks passed")


if __name__ == "__main__":
    main()
