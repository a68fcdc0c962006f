//! The IAM statements a cross-account consumer needs, so that an access
//! error can say exactly what to add and where.

use kcld_config::StreamArn;

mod delivery;

pub use delivery::{
    add_delivery, bucket_write_statement, destination_statement, BUCKET_WRITE_ACTIONS,
};

/// Every action polling a shared stream needs, on the stream. The console's
/// visual editor leaves out `kinesis:DescribeStream`; it is included here.
pub const STREAM_READ_ACTIONS: [&str; 5] = [
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
];

/// Every action reading a DynamoDB table's stream needs, on the stream
/// (what its resource policy can grant; AWS managed keys cannot be shared,
/// so the table must use its own or a customer-managed key).
pub const DYNAMODB_STREAM_READ_ACTIONS: [&str; 3] = [
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
];

/// The actions reading `stream` needs.
pub fn read_actions(stream: &StreamArn) -> &'static [&'static str] {
    if stream.is_dynamodb() {
        &DYNAMODB_STREAM_READ_ACTIONS
    } else {
        &STREAM_READ_ACTIONS
    }
}

/// The statement the stream owner adds to the stream's resource policy.
/// `principal` is the consumer's IAM role ARN (a role, never a function or
/// user ARN: the console rejects those).
pub fn stream_read_statement(stream: &StreamArn, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "kcld-cross-account-read",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": read_actions(stream),
        "Resource": stream.to_string(),
    })
}

/// A placeholder for the consumer role when kcld does not know it.
pub fn role_placeholder(consumer_account: Option<&str>) -> String {
    format!(
        "arn:aws:iam::{}:role/<consumer-role>",
        consumer_account.unwrap_or("<consumer-account>")
    )
}

/// One message for an AccessDenied on `action`: who must fix it and how.
pub fn access_denied_message(stream: &StreamArn, action: &str, detail: &str) -> String {
    let statement = stream_read_statement(stream, &role_placeholder(None));
    format!(
        "access denied: {action} on {stream} ({detail}). The stream owner (account {owner}) must \
         allow {action} to this consumer's IAM role in the stream's resource policy, and the role's \
         own IAM policy must allow it too. Statement for the stream policy: {statement}",
        owner = stream.account,
    )
}

/// The actions enhanced fan-out needs on the consumer.
pub const FAN_OUT_ACTIONS: [&str; 2] =
    ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"];

/// The statement the stream owner adds to the consumer's resource policy
/// to share an enhanced fan-out consumer with `principal` (a role ARN).
pub fn consumer_read_statement(consumer_arn: &str, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "kcld-cross-account-fan-out",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": FAN_OUT_ACTIONS,
        "Resource": consumer_arn,
    })
}

/// One message for an AccessDenied on a fan-out action on `consumer`.
pub fn consumer_access_denied_message(
    stream: &StreamArn,
    consumer: &str,
    action: &str,
    detail: &str,
) -> String {
    let statement = consumer_read_statement(consumer, &role_placeholder(None));
    format!(
        "access denied: {action} on consumer {consumer} ({detail}). The stream owner (account \
         {owner}) must allow {action} to this consumer's IAM role in the consumer's resource \
         policy (aws kinesis put-resource-policy --resource-arn <consumer ARN>), and the role's \
         own IAM policy must allow it too. Statement for the consumer policy: {statement}",
        owner = stream.account,
    )
}

/// kcld found no consumer of the configured name on another account's
/// stream: only the stream's own account can register one, so kcld does
/// not. Rendered in the daemon's keys ([`ForeignRegistration::config_error`])
/// or the MultiLang properties file's ([`ForeignRegistration::properties_error`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignRegistration {
    /// The other account's stream the consumer was looked up on.
    pub stream: StreamArn,
    /// The consumer name that was not found.
    pub name: String,
    /// The account kcld runs as, which may not register a consumer on the
    /// stream.
    pub caller_account: String,
}

impl ForeignRegistration {
    fn problem(&self) -> String {
        format!(
            "no consumer {name:?} on stream {stream}, which belongs to account {owner} while \
             this is account {caller}; only the stream's own account can register a consumer, \
             so kcld does not",
            name = self.name,
            stream = self.stream,
            owner = self.stream.account,
            caller = self.caller_account,
        )
    }

    /// What the stream's owner does, up to handing over the consumer ARN.
    fn owner_steps(&self) -> String {
        let principal = role_placeholder(Some(&self.caller_account));
        let consumer = format!(
            "{}/consumer/{}:<creation-timestamp>",
            self.stream, self.name
        );
        let statement = consumer_read_statement(&consumer, &principal);
        format!(
            "the stream owner runs `aws kinesis register-stream-consumer --stream-arn {stream} \
             --consumer-name {name}`, attaches this statement to the consumer's resource policy: \
             {statement}, and gives you the ConsumerARN",
            stream = self.stream,
            name = self.name,
        )
    }

    /// The error on `consumer_name` (kcld's configuration).
    pub fn config_error(&self) -> kcld_config::ConfigError {
        kcld_config::ConfigError::Key {
            key: "consumer_name".into(),
            problem: self.problem(),
            fix: format!(
                "{}: set consumer_arn to it instead of consumer_name",
                self.owner_steps()
            ),
        }
    }

    /// The same in a MultiLang properties file's terms: the KCL's DEFAULT
    /// retrieval mode chooses fan-out when no polling property is set.
    pub fn properties_error(&self) -> kcld_config::ConfigError {
        kcld_config::ConfigError::Key {
            key: "consumerName (properties file; applicationName when unset)".into(),
            problem: self.problem(),
            fix: format!(
                "{}; in the properties file: consumerArn = <that ARN>, or retrievalMode = POLLING \
                 to poll instead (with retrievalMode DEFAULT, fan-out is chosen when no polling \
                 property such as maxRecords is set, as in the KCL)",
                self.owner_steps()
            ),
        }
    }
}

impl std::fmt::Display for ForeignRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.config_error())
    }
}

/// What kcld does with its lease table.
pub const LEASE_TABLE_ACTIONS: [&str; 7] = [
    "dynamodb:CreateTable",
    "dynamodb:DescribeTable",
    "dynamodb:Scan",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
];

/// Everything `kcld policy` prints.
pub struct PolicyRequest<'a> {
    /// The shared stream to read.
    pub stream: &'a StreamArn,
    /// The consumer's IAM role ARN (the principal).
    pub role_arn: &'a str,
    /// An enhanced fan-out consumer to read through; `None` = polling only, no
    /// consumer policy.
    pub consumer_arn: Option<&'a str>,
    /// An enhanced fan-out consumer given by name (`fan_out.consumer_name`):
    /// kcld registers it when the stream is in the role's own account
    /// (`RegisterStreamConsumer`), else the stream owner registers and
    /// shares it. Ignored when `consumer_arn` is given.
    pub consumer_name: Option<&'a str>,
    /// The stream's customer-managed KMS key; `None` = no decrypt statements.
    pub kms_key_arn: Option<&'a str>,
    /// The lease table's name.
    pub lease_table: &'a str,
    /// The lease table's region, for its ARN.
    pub lease_table_region: &'a str,
    /// `aws.assume_role_external_id` when kcld assumes the consumer role
    /// (`aws.assume_role_arn`): the role's trust policy must allow it.
    pub assumed_with_external_id: Option<Option<&'a str>>,
}

pub use kcld_config::arn::role_account;

/// A fan-out consumer named in the configuration, before its ARN is known.
struct ConsumerByName<'a> {
    name: &'a str,
    /// The stream is in the consumer role's account: kcld registers it.
    same_account: bool,
    /// Its ARN as the owner will see it after registering.
    pending_arn: String,
    /// Every ARN it can get (for the role's own policy).
    any_arn: String,
}

/// The stream owner's resource policies, the consumer role's policy, and the
/// CLI commands that attach them, as one JSON document.
pub fn policies(req: &PolicyRequest<'_>) -> serde_json::Value {
    let stream = req.stream.to_string();
    let consumer_account = role_account(req.role_arn).unwrap_or("<consumer-account>");
    let role_name = req.role_arn.rsplit('/').next().unwrap_or("<consumer-role>");
    let mut out = serde_json::Map::new();
    out.insert(
        "stream_resource_policy".into(),
        serde_json::json!({ "Version": "2012-10-17", "Statement": [stream_read_statement(req.stream, req.role_arn)] }),
    );
    let mut read_actions: Vec<&str> = read_actions(req.stream).to_vec();
    let mut read_resources = vec![stream.clone()];
    // A consumer by name: its ARN ends with the registration's timestamp,
    // unknown until it is registered.
    let by_name = req
        .consumer_name
        .filter(|_| req.consumer_arn.is_none())
        .map(|name| ConsumerByName {
            name,
            same_account: consumer_account == req.stream.account,
            pending_arn: format!("{stream}/consumer/{name}:<creation-timestamp>"),
            any_arn: format!("{stream}/consumer/{name}:*"),
        });
    if let Some(consumer) = req.consumer_arn {
        out.insert(
            "consumer_resource_policy".into(),
            serde_json::json!({ "Version": "2012-10-17", "Statement": [consumer_read_statement(consumer, req.role_arn)] }),
        );
        read_actions.extend(FAN_OUT_ACTIONS);
        read_resources.push(consumer.to_owned());
    }
    if let Some(c) = &by_name {
        if !c.same_account {
            out.insert(
                "consumer_resource_policy".into(),
                serde_json::json!({ "Version": "2012-10-17", "Statement": [consumer_read_statement(&c.pending_arn, req.role_arn)] }),
            );
        }
        read_actions.extend(FAN_OUT_ACTIONS);
        read_resources.push(c.any_arn.clone());
    }
    let table_arn = format!(
        "arn:{}:dynamodb:{}:{consumer_account}:table/{}",
        req.stream.partition, req.lease_table_region, req.lease_table
    );
    let mut statements = vec![
        serde_json::json!({ "Sid": "ReadSharedStream", "Effect": "Allow", "Action": read_actions, "Resource": read_resources }),
        serde_json::json!({ "Sid": "LeaseTable", "Effect": "Allow", "Action": LEASE_TABLE_ACTIONS, "Resource": table_arn }),
    ];
    if by_name.as_ref().is_some_and(|c| c.same_account) {
        // kcld registers the consumer when it finds none of that name.
        statements.push(serde_json::json!({ "Sid": "RegisterConsumer", "Effect": "Allow", "Action": ["kinesis:RegisterStreamConsumer"], "Resource": stream }));
    }
    if let Some(key) = req.kms_key_arn {
        statements.push(serde_json::json!({ "Sid": "DecryptSharedStream", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": key }));
        out.insert(
            "kms_key_policy_statement".into(),
            serde_json::json!({
                "Sid": "kcld-cross-account-decrypt",
                "Effect": "Allow",
                "Principal": { "AWS": req.role_arn },
                "Action": ["kms:Decrypt"],
                "Resource": "*",
            }),
        );
    }
    out.insert(
        "consumer_role_policy".into(),
        serde_json::json!({ "Version": "2012-10-17", "Statement": statements }),
    );
    if let Some(external_id) = req.assumed_with_external_id {
        // kcld runs as another identity and assumes the consumer role.
        let mut trust = serde_json::json!({
            "Effect": "Allow",
            "Principal": { "AWS": "<the identity kcld runs as (kcld doctor shows it)>" },
            "Action": "sts:AssumeRole",
        });
        if let Some(id) = external_id {
            trust["Condition"] = serde_json::json!({ "StringEquals": { "sts:ExternalId": id } });
        }
        out.insert(
            "consumer_role_trust_policy".into(),
            serde_json::json!({ "Version": "2012-10-17", "Statement": [trust] }),
        );
    }
    // Each command names the account to run it in and the field of this
    // document to save as its policy file.
    let step = |account: &str, who: &str, saves: &str, command: String| serde_json::json!({ "account": account, "run_by": who, "save_field_as_file": saves, "command": command });
    let owner = req.stream.account.as_str();
    let region = req.stream.region.as_str();
    let mut commands = vec![step(
        owner,
        "stream owner",
        "stream_resource_policy -> stream-policy.json",
        format!(
            "aws {} put-resource-policy --region {region} --resource-arn {stream} --policy file://stream-policy.json",
            if req.stream.is_dynamodb() { "dynamodb" } else { "kinesis" }
        ),
    )];
    if let Some(consumer) = req.consumer_arn {
        commands.push(step(
            owner,
            "stream owner",
            "consumer_resource_policy -> consumer-policy.json",
            format!("aws kinesis put-resource-policy --region {region} --resource-arn {consumer} --policy file://consumer-policy.json"),
        ));
    }
    if let Some(c) = by_name.as_ref().filter(|c| !c.same_account) {
        // Only the stream's account can register a consumer on it.
        commands.push(step(
            owner,
            "stream owner",
            "nothing: prints the ConsumerARN, which replaces <creation-timestamp> below and goes into kcld's fan_out.consumer_arn",
            format!("aws kinesis register-stream-consumer --region {region} --stream-arn {stream} --consumer-name {}", c.name),
        ));
        commands.push(step(
            owner,
            "stream owner",
            "consumer_resource_policy (with the ConsumerARN) -> consumer-policy.json",
            format!("aws kinesis put-resource-policy --region {region} --resource-arn {} --policy file://consumer-policy.json", c.pending_arn),
        ));
    }
    if let Some(key) = req.kms_key_arn {
        commands.push(step(
            owner,
            "stream owner",
            "kms_key_policy_statement: add it to the key's policy document -> key-policy.json",
            format!("aws kms put-key-policy --region {region} --key-id {key} --policy-name default --policy file://key-policy.json"),
        ));
    }
    commands.push(step(
        consumer_account,
        "consumer",
        "consumer_role_policy -> role-policy.json",
        format!("aws iam put-role-policy --role-name {role_name} --policy-name kcld --policy-document file://role-policy.json"),
    ));
    if req.assumed_with_external_id.is_some() {
        commands.push(step(
            consumer_account,
            "consumer",
            "consumer_role_trust_policy -> trust-policy.json",
            format!("aws iam update-assume-role-policy --role-name {role_name} --policy-document file://trust-policy.json"),
        ));
    }
    out.insert("commands".into(), serde_json::json!(commands));
    serde_json::Value::Object(out)
}

/// One stream of several, for [`policies_for_streams`].
pub struct StreamPolicyRequest<'a> {
    /// The stream.
    pub stream: &'a StreamArn,
    /// Its fan-out consumer by ARN, if any.
    pub consumer_arn: Option<String>,
    /// Its fan-out consumer by name, if any.
    pub consumer_name: Option<&'a str>,
    /// The role kcld assumes to read it (`streams[].assume_role_arn`) and
    /// the external id the role's trust policy requires; `None`: the
    /// consumer role reads it.
    pub assume_role: Option<(&'a str, Option<&'a str>)>,
}

/// [`policies`] for several streams: for each stream the resource
/// policies its owner attaches and the commands the owner runs (in the
/// owner's account and the stream's region); one policy for the consumer
/// role covering every stream it reads and the lease table; and for each
/// role a stream is read through (`streams[].assume_role_arn`), its own
/// policy and the trust policy that lets the consumer role assume it.
pub fn policies_for_streams(
    role_arn: &str,
    streams: &[StreamPolicyRequest<'_>],
    lease_table: &str,
    lease_table_region: &str,
) -> serde_json::Value {
    let consumer_account = role_account(role_arn).unwrap_or("<consumer-account>");
    let role_name = |arn: &str| arn.rsplit('/').next().unwrap_or("<role>").to_owned();
    let mut entries = Vec::new();
    // Role ARN -> the statements it needs, in the order roles first appear.
    let mut role_statements: Vec<(String, Option<&str>, Vec<serde_json::Value>)> =
        vec![(role_arn.to_owned(), None, Vec::new())];
    let mut table_statement = None;
    for (i, s) in streams.iter().enumerate() {
        let principal = s.assume_role.map_or(role_arn, |(role, _)| role);
        let doc = policies(&PolicyRequest {
            stream: s.stream,
            role_arn: principal,
            consumer_arn: s.consumer_arn.as_deref(),
            consumer_name: s.consumer_name,
            kms_key_arn: None,
            lease_table,
            lease_table_region,
            assumed_with_external_id: None,
        });
        let mut entry = serde_json::Map::new();
        entry.insert("stream_arn".into(), serde_json::json!(s.stream.to_string()));
        entry.insert("account".into(), serde_json::json!(s.stream.account));
        entry.insert("region".into(), serde_json::json!(s.stream.region));
        entry.insert("principal".into(), serde_json::json!(principal));
        for field in ["stream_resource_policy", "consumer_resource_policy"] {
            if let Some(value) = doc.get(field) {
                entry.insert(field.into(), value.clone());
            }
        }
        let owner_commands: Vec<serde_json::Value> = doc["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["run_by"] == "stream owner")
            .map(|c| {
                // The fields are this entry's.
                let mut c = c.clone();
                if let Some(saves) = c["save_field_as_file"].as_str() {
                    c["save_field_as_file"] = serde_json::json!(format!("streams[{i}].{saves}"));
                }
                c
            })
            .collect();
        entry.insert("commands".into(), serde_json::json!(owner_commands));
        entries.push(serde_json::Value::Object(entry));

        let statements = doc["consumer_role_policy"]["Statement"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let at = match role_statements.iter().position(|(r, _, _)| r == principal) {
            Some(at) => at,
            None => {
                role_statements.push((
                    principal.to_owned(),
                    s.assume_role.and_then(|(_, id)| id),
                    Vec::new(),
                ));
                role_statements.len() - 1
            }
        };
        for mut statement in statements {
            if statement["Sid"] == "LeaseTable" {
                table_statement.get_or_insert(statement);
                continue;
            }
            // Sids are unique within a policy: numbered by stream.
            if let Some(sid) = statement["Sid"].as_str() {
                statement["Sid"] = serde_json::json!(format!("{sid}{}", i + 1));
            }
            role_statements[at].2.push(statement);
        }
    }
    let assumed: Vec<&(String, Option<&str>, Vec<serde_json::Value>)> =
        role_statements.iter().skip(1).collect();
    let mut consumer_statements = role_statements[0].2.clone();
    consumer_statements.extend(table_statement);
    if !assumed.is_empty() {
        consumer_statements.push(serde_json::json!({
            "Sid": "AssumeStreamRoles",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole"],
            "Resource": assumed.iter().map(|(r, _, _)| r.as_str()).collect::<Vec<_>>(),
        }));
    }
    let step = |account: &str, saves: String, command: String| {
        // A role may live in a stream owner's account.
        let who = if account == consumer_account {
            "consumer"
        } else {
            "role owner"
        };
        serde_json::json!({ "account": account, "run_by": who, "save_field_as_file": saves, "command": command })
    };
    let mut commands = vec![step(
        consumer_account,
        "consumer_role_policy -> role-policy.json".into(),
        format!(
            "aws iam put-role-policy --role-name {} --policy-name kcld --policy-document file://role-policy.json",
            role_name(role_arn)
        ),
    )];
    let mut assumed_roles = Vec::new();
    for (n, (role, external_id, statements)) in assumed.iter().enumerate() {
        let mut trust = serde_json::json!({
            "Effect": "Allow",
            "Principal": { "AWS": role_arn },
            "Action": "sts:AssumeRole",
        });
        if let Some(id) = external_id {
            trust["Condition"] = serde_json::json!({ "StringEquals": { "sts:ExternalId": id } });
        }
        let account = role_account(role).unwrap_or("<role-account>");
        let name = role_name(role);
        let field = format!("assumed_roles[{n}]");
        commands.push(step(
            account,
            format!("{field}.role_policy -> {name}-policy.json"),
            format!("aws iam put-role-policy --role-name {name} --policy-name kcld --policy-document file://{name}-policy.json"),
        ));
        commands.push(step(
            account,
            format!("{field}.trust_policy -> {name}-trust.json"),
            format!("aws iam update-assume-role-policy --role-name {name} --policy-document file://{name}-trust.json"),
        ));
        assumed_roles.push(serde_json::json!({
            "role_arn": role,
            "role_policy": { "Version": "2012-10-17", "Statement": statements },
            "trust_policy": { "Version": "2012-10-17", "Statement": [trust] },
        }));
    }
    let mut out = serde_json::json!({
        "streams": entries,
        "consumer_role_policy": { "Version": "2012-10-17", "Statement": consumer_statements },
        "commands": commands,
    });
    if !assumed_roles.is_empty() {
        out["assumed_roles"] = serde_json::json!(assumed_roles);
    }
    out
}
