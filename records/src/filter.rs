//! Filter criteria with Lambda's filter rule syntax: a record is delivered
//! when it matches at least one of up to five patterns, and is otherwise
//! passed over (counted, and checkpointed past like a delivered one).
//!
//! A pattern is a JSON object whose keys name the record's fields and whose
//! leaves are arrays of rules, as Lambda (and EventBridge) write them:
//!
//! ```json
//! {"partitionKey": [{"prefix": "eu-"}], "data": {"status": ["shipped"], "total": [{"numeric": [">", 100]}]}}
//! ```
//!
//! - a Kinesis record is matched as Lambda matches it: `partitionKey`,
//!   `sequenceNumber`, `approximateArrivalTimestamp`, and `data`, the
//!   record's data parsed as JSON (data that is not JSON matches no
//!   condition on `data`, as in Lambda);
//! - a DynamoDB stream record is matched as its JSON (`eventName`,
//!   `dynamodb.Keys`, `dynamodb.NewImage`, ... in DynamoDB JSON);
//! - fields of one object must all match (AND); the rules of one array are
//!   alternatives (OR); a field whose value is an array matches when one of
//!   its elements does;
//! - rules: a string, number or null (equal), `{"prefix": s}`,
//!   `{"suffix": s}`, `{"equals-ignore-case": s}`,
//!   `{"anything-but": v | [v, ...] | {"prefix": s}}` (the field exists and
//!   is none of them), `{"numeric": [op, n, (op, n)]}` (op one of `<`,
//!   `<=`, `=`, `>`, `>=`), `{"exists": true | false}`.

use serde_json::{Map, Value};

use crate::Record;

/// Lambda's limit on filters per event source mapping.
pub const MAX_FILTERS: usize = 5;
/// Lambda's limit on one pattern's length, in characters.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Why a pattern cannot be used; says which filter and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {index}: {problem}")]
pub struct FilterError {
    /// The filter's place in the list, from 0.
    pub index: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// The shape of the records filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordShape {
    /// Kinesis records: metadata fields and `data` as JSON.
    Kinesis,
    /// DynamoDB stream records: the record's own JSON.
    DynamoDb,
}

/// Up to five patterns; a record passes when one matches.
#[derive(Clone, Debug)]
pub struct Filters {
    patterns: Vec<Pattern>,
    shape: RecordShape,
}

#[derive(Clone, Debug)]
struct Pattern(Vec<(String, Condition)>);

#[derive(Clone, Debug)]
enum Condition {
    /// A nested object: its own fields.
    Object(Pattern),
    /// Alternatives for one field.
    Rules(Vec<Rule>),
}

#[derive(Clone, Debug)]
enum Rule {
    Equals(Value),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(String),
    AnythingBut(Vec<Value>),
    AnythingButPrefix(String),
    Numeric(Vec<(Op, f64)>),
    Exists(bool),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Lt,
    Le,
    Eq,
    Gt,
    Ge,
}

impl Filters {
    /// Parses `patterns` (each a JSON object as text, as Lambda's
    /// `FilterCriteria.Filters[].Pattern`).
    pub fn parse(patterns: &[String], shape: RecordShape) -> Result<Self, FilterError> {
        if patterns.len() > MAX_FILTERS {
            return Err(FilterError {
                index: MAX_FILTERS,
                problem: format!(
                    "{} filters given; at most {MAX_FILTERS} (Lambda's limit): combine patterns, their fields are ANDed and the values of one field ORed",
                    patterns.len()
                ),
            });
        }
        let mut parsed = Vec::with_capacity(patterns.len());
        for (index, text) in patterns.iter().enumerate() {
            let fail = |problem: String| FilterError { index, problem };
            if text.chars().count() > MAX_PATTERN_LEN {
                return Err(fail(format!(
                    "the pattern is longer than {MAX_PATTERN_LEN} characters (Lambda's limit)"
                )));
            }
            let value: Value =
                serde_json::from_str(text).map_err(|e| fail(format!("not JSON ({e}): {text}")))?;
            let Value::Object(map) = value else {
                return Err(fail(format!("must be a JSON object of fields: {text}")));
            };
            if map.is_empty() {
                return Err(fail(
                    "an empty pattern matches everything; remove it".into(),
                ));
            }
            parsed.push(pattern(&map, "").map_err(fail)?);
        }
        Ok(Filters {
            patterns: parsed,
            shape,
        })
    }

    /// Whether `record` matches one of the patterns (always, without any).
    pub fn matches(&self, record: &Record) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        match self.shape {
            RecordShape::DynamoDb => match serde_json::from_slice::<Value>(&record.data) {
                Ok(event) => self.patterns.iter().any(|p| p.matches(&event)),
                Err(_) => false,
            },
            RecordShape::Kinesis => {
                // The metadata fields are read in place; the data is parsed
                // once, and only when a pattern gets to a condition on it.
                let mut data: Option<Option<Value>> = None;
                self.patterns.iter().any(|p| {
                    p.0.iter().all(|(key, condition)| {
                        let field = match key.as_str() {
                            "partitionKey" => Field::Text(record.partition_key.as_str()),
                            "sequenceNumber" => Field::Text(record.sequence_number.as_str()),
                            "kinesisSchemaVersion" => Field::Text("1.0"),
                            "approximateArrivalTimestamp" => {
                                Field::Number(record.approximate_arrival_ms as f64 / 1000.0)
                            }
                            "data" => {
                                // Data that is not JSON has no fields.
                                let parsed = data.get_or_insert_with(|| {
                                    serde_json::from_slice::<Value>(&record.data).ok()
                                });
                                match parsed {
                                    Some(v) => Field::Json(v),
                                    None => Field::Missing,
                                }
                            }
                            _ => Field::Missing,
                        };
                        condition.matches_field(field)
                    })
                })
            }
        }
    }
}

/// A record's field as a pattern sees it, without building JSON for it.
enum Field<'a> {
    Missing,
    Text(&'a str),
    Number(f64),
    Json(&'a Value),
}

impl Condition {
    fn matches_field(&self, field: Field<'_>) -> bool {
        match (self, field) {
            (_, Field::Json(v)) => match self {
                Condition::Object(inner) => match v {
                    Value::Object(_) => inner.matches(v),
                    Value::Array(items) => items.iter().any(|v| inner.matches(v)),
                    _ => inner.matches_missing(),
                },
                Condition::Rules(rules) => rules.iter().any(|r| r.matches(Some(v))),
            },
            (Condition::Object(inner), _) => inner.matches_missing(),
            (Condition::Rules(rules), Field::Missing) => rules.iter().any(|r| r.matches(None)),
            (Condition::Rules(rules), Field::Text(s)) => rules.iter().any(|r| r.matches_text(s)),
            (Condition::Rules(rules), Field::Number(n)) => {
                rules.iter().any(|r| r.matches_number(n))
            }
        }
    }
}

fn pattern(map: &Map<String, Value>, path: &str) -> Result<Pattern, String> {
    let mut fields = Vec::with_capacity(map.len());
    for (key, value) in map {
        let at = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let condition = match value {
            Value::Object(inner) if inner.is_empty() => {
                return Err(format!("{at}: an empty object matches nothing"))
            }
            Value::Object(inner) => Condition::Object(pattern(inner, &at)?),
            Value::Array(rules) if rules.is_empty() => {
                return Err(format!("{at}: an empty list matches nothing"))
            }
            Value::Array(rules) => Condition::Rules(
                rules
                    .iter()
                    .map(|r| rule(r, &at))
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(format!(
                    "{at}: a value must be a list of rules, e.g. [{other}]"
                ))
            }
        };
        fields.push((key.clone(), condition));
    }
    Ok(Pattern(fields))
}

fn rule(value: &Value, at: &str) -> Result<Rule, String> {
    let Value::Object(op) = value else {
        return match value {
            Value::String(_) | Value::Number(_) | Value::Null | Value::Bool(_) => {
                Ok(Rule::Equals(value.clone()))
            }
            _ => Err(format!("{at}: {value} is not a rule")),
        };
    };
    let [(name, arg)] = op.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("{at}: a rule has one operator: {value}"));
    };
    let text = |arg: &Value| -> Result<String, String> {
        arg.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{at}: {name} takes a string: {value}"))
    };
    match name.as_str() {
        "prefix" => Ok(Rule::Prefix(text(arg)?)),
        "suffix" => Ok(Rule::Suffix(text(arg)?)),
        "equals-ignore-case" => Ok(Rule::EqualsIgnoreCase(text(arg)?.to_lowercase())),
        "exists" => match arg {
            Value::Bool(b) => Ok(Rule::Exists(*b)),
            _ => Err(format!("{at}: exists takes true or false: {value}")),
        },
        "anything-but" => match arg {
            Value::Object(inner) => match inner.get("prefix").and_then(Value::as_str) {
                Some(p) if inner.len() == 1 => Ok(Rule::AnythingButPrefix(p.to_owned())),
                _ => Err(format!(
                    "{at}: anything-but takes values or {{\"prefix\": ...}}: {value}"
                )),
            },
            Value::Array(values) => Ok(Rule::AnythingBut(values.clone())),
            Value::String(_) | Value::Number(_) => Ok(Rule::AnythingBut(vec![arg.clone()])),
            _ => Err(format!("{at}: anything-but takes values: {value}")),
        },
        "numeric" => {
            let Value::Array(parts) = arg else {
                return Err(format!("{at}: numeric takes [op, number, ...]: {value}"));
            };
            if parts.is_empty() || parts.len() % 2 != 0 || parts.len() > 4 {
                return Err(format!(
                    "{at}: numeric takes one or two comparisons, [\">\", 0, \"<=\", 5]: {value}"
                ));
            }
            let mut comparisons = Vec::new();
            for pair in parts.chunks(2) {
                let op = match pair[0].as_str() {
                    Some("<") => Op::Lt,
                    Some("<=") => Op::Le,
                    Some("=") => Op::Eq,
                    Some(">") => Op::Gt,
                    Some(">=") => Op::Ge,
                    _ => {
                        return Err(format!(
                            "{at}: numeric operators are <, <=, =, >, >=: {value}"
                        ))
                    }
                };
                let n = pair[1]
                    .as_f64()
                    .ok_or_else(|| format!("{at}: numeric compares with numbers: {value}"))?;
                comparisons.push((op, n));
            }
            Ok(Rule::Numeric(comparisons))
        }
        other => Err(format!(
            "{at}: {other:?} is not a rule kcld knows (prefix, suffix, equals-ignore-case, anything-but, numeric, exists)"
        )),
    }
}

impl Pattern {
    fn matches(&self, event: &Value) -> bool {
        self.0.iter().all(|(key, condition)| {
            let field = event.get(key);
            match condition {
                Condition::Object(inner) => match field {
                    Some(v @ Value::Object(_)) => inner.matches(v),
                    // An object pattern under a list: one element matches.
                    Some(Value::Array(items)) => items.iter().any(|v| inner.matches(v)),
                    _ => inner.matches_missing(),
                },
                Condition::Rules(rules) => rules.iter().any(|r| r.matches(field)),
            }
        })
    }

    /// A missing object matches only when every rule under it asks for
    /// absence.
    fn matches_missing(&self) -> bool {
        self.0.iter().all(|(_, condition)| match condition {
            Condition::Object(inner) => inner.matches_missing(),
            Condition::Rules(rules) => rules.iter().any(|r| matches!(r, Rule::Exists(false))),
        })
    }
}

impl Rule {
    /// [`Rule::matches`] on a string field.
    fn matches_text(&self, s: &str) -> bool {
        match self {
            Rule::Equals(want) => want.as_str() == Some(s),
            Rule::Prefix(p) => s.starts_with(p.as_str()),
            Rule::Suffix(p) => s.ends_with(p.as_str()),
            Rule::EqualsIgnoreCase(p) => s.to_lowercase() == *p,
            Rule::AnythingBut(values) => !values.iter().any(|v| v.as_str() == Some(s)),
            Rule::AnythingButPrefix(p) => !s.starts_with(p.as_str()),
            Rule::Numeric(_) => false,
            Rule::Exists(wanted) => *wanted,
        }
    }

    /// [`Rule::matches`] on a number field.
    fn matches_number(&self, n: f64) -> bool {
        self.matches(Some(&serde_json::json!(n)))
    }

    fn matches(&self, field: Option<&Value>) -> bool {
        match (self, field) {
            (Rule::Exists(wanted), _) => field.is_some() == *wanted,
            (_, None) => false,
            (_, Some(Value::Array(items))) => items.iter().any(|v| self.matches_one(v)),
            (_, Some(v)) => self.matches_one(v),
        }
    }

    fn matches_one(&self, v: &Value) -> bool {
        match self {
            Rule::Equals(want) => equal(want, v),
            Rule::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Rule::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
            Rule::EqualsIgnoreCase(p) => v.as_str().is_some_and(|s| s.to_lowercase() == *p),
            Rule::AnythingBut(values) => !values.iter().any(|want| equal(want, v)),
            Rule::AnythingButPrefix(p) => v.as_str().is_some_and(|s| !s.starts_with(p.as_str())),
            Rule::Numeric(comparisons) => v.as_f64().is_some_and(|n| {
                comparisons.iter().all(|(op, x)| match op {
                    Op::Lt => n < *x,
                    Op::Le => n <= *x,
                    Op::Eq => n == *x,
                    Op::Gt => n > *x,
                    Op::Ge => n >= *x,
                })
            }),
            Rule::Exists(_) => true,
        }
    }
}

/// Equality as the rules mean it: numbers by value (`100` and `100.0`),
/// everything else as written.
fn equal(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kcld_checkpoint::SequenceNumber;

    fn record(key: &str, data: &str) -> Record {
        Record {
            sequence_number: "49590338271490256608559692538361571095921575989136588898"
                .parse::<SequenceNumber>()
                .unwrap(),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
            approximate_arrival_ms: 1_709_100_911_000,
            encryption: None,
        }
    }

    fn kinesis(patterns: &[&str]) -> Filters {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Filters::parse(&owned, RecordShape::Kinesis).unwrap()
    }

    #[test]
    fn the_rules_of_lambdas_syntax() {
        let order = r#"{"status":"shipped","total":120.5,"tags":["gift","eu"],"customer":{"tier":"Gold","id":"c-7"},"note":null}"#;
        let r = record("eu-west-42", order);
        for (pattern, want) in [
            (r#"{"data":{"status":["shipped"]}}"#, true),
            (r#"{"data":{"status":["placed","shipped"]}}"#, true),
            (r#"{"data":{"status":["placed"]}}"#, false),
            (r#"{"partitionKey":[{"prefix":"eu-"}]}"#, true),
            (r#"{"partitionKey":[{"suffix":"-42"}]}"#, true),
            (r#"{"partitionKey":[{"prefix":"us-"}]}"#, false),
            (
                r#"{"data":{"total":[{"numeric":[">",100,"<=",200]}]}}"#,
                true,
            ),
            (r#"{"data":{"total":[{"numeric":["<",100]}]}}"#, false),
            (r#"{"data":{"total":[120.5]}}"#, true),
            (r#"{"data":{"tags":["eu"]}}"#, true),
            (
                r#"{"data":{"customer":{"tier":[{"equals-ignore-case":"gold"}]}}}"#,
                true,
            ),
            (
                r#"{"data":{"status":[{"anything-but":["placed","cancelled"]}]}}"#,
                true,
            ),
            (r#"{"data":{"status":[{"anything-but":"shipped"}]}}"#, false),
            (
                r#"{"data":{"status":[{"anything-but":{"prefix":"ship"}}]}}"#,
                false,
            ),
            (r#"{"data":{"missing":[{"exists":false}]}}"#, true),
            (r#"{"data":{"missing":[{"exists":true}]}}"#, false),
            (r#"{"data":{"status":[{"exists":true}]}}"#, true),
            (r#"{"data":{"note":[null]}}"#, true),
            (r#"{"data":{"gone":{"deeper":[{"exists":false}]}}}"#, true),
            // Fields AND, values OR.
            (
                r#"{"partitionKey":[{"prefix":"eu-"}],"data":{"status":["placed"]}}"#,
                false,
            ),
        ] {
            assert_eq!(kinesis(&[pattern]).matches(&r), want, "{pattern}");
        }
        // Patterns OR.
        let either = kinesis(&[
            r#"{"data":{"status":["placed"]}}"#,
            r#"{"partitionKey":["eu-west-42"]}"#,
        ]);
        assert!(either.matches(&r));
        // Data that is not JSON matches no data condition, but metadata ones.
        let raw = record("eu-1", "not json");
        assert!(!kinesis(&[r#"{"data":{"status":[{"exists":true}]}}"#]).matches(&raw));
        assert!(kinesis(&[r#"{"partitionKey":[{"prefix":"eu"}]}"#]).matches(&raw));
        // No filter: everything passes.
        assert!(Filters::parse(&[], RecordShape::Kinesis)
            .unwrap()
            .matches(&raw));
    }

    #[test]
    fn dynamodb_records_are_matched_as_their_json() {
        let change = r#"{"eventName":"MODIFY","dynamodb":{"Keys":{"id":{"S":"o-1"}},"NewImage":{"status":{"S":"shipped"},"total":{"N":"120"}}}}"#;
        let r = record("1", change);
        let f = |p: &str| Filters::parse(&[p.to_owned()], RecordShape::DynamoDb).unwrap();
        assert!(f(
            r#"{"eventName":["MODIFY"],"dynamodb":{"NewImage":{"status":{"S":["shipped"]}}}}"#
        )
        .matches(&r));
        assert!(!f(r#"{"eventName":["INSERT","REMOVE"]}"#).matches(&r));
    }

    #[test]
    fn bad_patterns_name_the_filter_and_the_problem() {
        let err = |patterns: &[&str]| {
            let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            Filters::parse(&owned, RecordShape::Kinesis).unwrap_err()
        };
        let e = err(&[r#"{"data":{"status":["a"]}}"#, "{oops"]);
        assert_eq!(e.index, 1);
        assert!(e.problem.contains("not JSON"), "{e}");
        assert!(err(&[r#"{"data":{"status":"shipped"}}"#])
            .problem
            .contains("list of rules"));
        assert!(err(&[r#"{"data":{"x":[{"cidr":"10.0.0.0/24"}]}}"#])
            .problem
            .contains("cidr"));
        assert!(err(&[r#"{"data":{"x":[{"numeric":["~",1]}]}}"#])
            .problem
            .contains("operators"));
        assert!(err(&["{}"]).problem.contains("matches everything"));
        let six = vec![r#"{"partitionKey":["a"]}"#; 6];
        assert!(err(&six).problem.contains("at most 5"));
        let long = format!(r#"{{"partitionKey":["{}"]}}"#, "x".repeat(5000));
        assert!(err(&[long.as_str()]).problem.contains("4096"));
    }
}
