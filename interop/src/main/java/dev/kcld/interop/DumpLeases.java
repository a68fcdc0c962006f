package dev.kcld.interop;

import java.net.URI;
import java.util.Map;
import java.util.TreeSet;

import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClientBuilder;
import software.amazon.awssdk.services.dynamodb.model.AttributeValue;
import software.amazon.awssdk.services.dynamodb.model.ScanRequest;
import software.amazon.awssdk.services.dynamodb.model.ScanResponse;
import software.amazon.kinesis.leases.Lease;
import software.amazon.kinesis.leases.dynamodb.DynamoDBLeaseSerializer;
import software.amazon.kinesis.retrieval.kpl.ExtendedSequenceNumber;

/**
 * `MODE=dump-leases`: reads every lease of APPLICATION_NAME's table through the KCL's own
 * DynamoDBLeaseSerializer (the code every KCL worker reads leases with) and prints one JSON line per lease on
 * stdout, so a test can compare what the KCL understands with what was written. Items of other KCL 3.x entity
 * types are skipped as the KCL skips them. A lease the serializer cannot read is printed with an "error".
 */
final class DumpLeases {
    private DumpLeases() {
    }

    static int run(Env env) {
        Region region = Region.of(env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1")));
        DynamoDbAsyncClientBuilder builder = DynamoDbAsyncClient.builder().region(region);
        String key = env.get("AWS_ACCESS_KEY_ID", null);
        if (key != null) {
            builder.credentialsProvider(StaticCredentialsProvider.create(
                    AwsBasicCredentials.create(key, env.required("AWS_SECRET_ACCESS_KEY"))));
        }
        String endpoint = env.get("AWS_ENDPOINT_URL_DYNAMODB", null);
        if (endpoint != null) {
            builder.endpointOverride(URI.create(endpoint));
        }
        String table = env.required("APPLICATION_NAME");
        DynamoDBLeaseSerializer serializer = new DynamoDBLeaseSerializer();
        try (DynamoDbAsyncClient dynamo = builder.build()) {
            Map<String, AttributeValue> start = null;
            do {
                ScanRequest.Builder scan = ScanRequest.builder().tableName(table).consistentRead(true);
                if (start != null) {
                    scan.exclusiveStartKey(start);
                }
                ScanResponse page = dynamo.scan(scan.build()).join();
                for (Map<String, AttributeValue> item : page.items()) {
                    AttributeValue type = item.get("entityType");
                    if (type != null && !"LEASE".equals(type.s())) {
                        continue;
                    }
                    System.out.println(describe(serializer, item));
                }
                start = page.hasLastEvaluatedKey() && !page.lastEvaluatedKey().isEmpty() ? page.lastEvaluatedKey()
                        : null;
            } while (start != null);
        }
        return 0;
    }

    private static String describe(DynamoDBLeaseSerializer serializer, Map<String, AttributeValue> item) {
        AttributeValue rawKey = item.get("leaseKey");
        Json out = Json.obj().put("leaseKey", rawKey == null ? null : rawKey.s());
        Lease lease;
        try {
            lease = serializer.fromDynamoRecord(item);
        } catch (RuntimeException e) {
            return out.put("error", e.getClass().getName() + ": " + e.getMessage()).toString();
        }
        out.put("leaseKey", lease.leaseKey())
                .put("leaseOwner", lease.leaseOwner())
                .put("leaseCounter", lease.leaseCounter());
        putEsn(out, "checkpoint", lease.checkpoint());
        putEsn(out, "pendingCheckpoint", lease.pendingCheckpoint());
        out.put("ownerSwitchesSinceCheckpoint", lease.ownerSwitchesSinceCheckpoint())
                .put("parentShardIds", String.join(",", new TreeSet<>(lease.parentShardIds())))
                .put("childShardIds", String.join(",", new TreeSet<>(lease.childShardIds())));
        if (lease.hashKeyRangeForLease() != null) {
            out.put("startingHashKey", lease.hashKeyRangeForLease().serializedStartingHashKey())
                    .put("endingHashKey", lease.hashKeyRangeForLease().serializedEndingHashKey());
        }
        return out.toString();
    }

    private static void putEsn(Json out, String name, ExtendedSequenceNumber esn) {
        if (esn == null) {
            out.put(name, null);
            return;
        }
        out.put(name, esn.sequenceNumber()).put(name + "SubSequenceNumber", esn.subSequenceNumber());
    }
}
