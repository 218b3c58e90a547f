//! Job filter rules (spec jobs.md §19, upstream `doc/design-optables.rst`): administrator rules
//! that let queued jobs run, hold them, reject them or rate-limit them. Rules are not jobs; they
//! are stored in their own sled tree and apply from the next scheduling pass.

use super::job::Job;
use crate::qlang::Filter;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A rule as clients see it (`FILTER_RULE_FIELDS` upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterRule {
    pub uuid: String,
    pub priority: i64,
    pub watermark: u64,
    pub predicates: Vec<Value>,
    pub action: Value,
    pub reason_trail: Vec<Value>,
}

impl FilterRule {
    pub fn field(&self, name: &str) -> Option<Value> {
        Some(match name {
            "uuid" => json!(self.uuid),
            "priority" => json!(self.priority),
            "watermark" => json!(self.watermark),
            "predicates" => json!(self.predicates),
            "action" => self.action.clone(),
            "reason_trail" => json!(self.reason_trail),
            _ => return None,
        })
    }
}

pub const FILTER_RULE_FIELDS: &[&str] = &[
    "watermark",
    "priority",
    "predicates",
    "action",
    "reason_trail",
    "uuid",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Accept,
    Pause,
    Reject,
    Continue,
    RateLimit(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum FilterRuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("Filter rule {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] super::store::StoreError),
}

fn invalid(message: String) -> FilterRuleError {
    FilterRuleError::Invalid(message)
}

fn parse_action(v: &Value) -> Result<Action, FilterRuleError> {
    match v {
        Value::String(s) => match s.as_str() {
            "ACCEPT" => Ok(Action::Accept),
            "PAUSE" => Ok(Action::Pause),
            "REJECT" => Ok(Action::Reject),
            "CONTINUE" => Ok(Action::Continue),
            other => Err(invalid(format!("Unknown filter action '{other}'"))),
        },
        Value::Array(a) if a.len() == 2 && a[0] == "RATE_LIMIT" => match a[1].as_u64() {
            Some(n) if n > 0 => Ok(Action::RateLimit(n as usize)),
            _ => Err(invalid(format!(
                "RATE_LIMIT needs a positive integer, got {}",
                a[1]
            ))),
        },
        other => Err(invalid(format!("Invalid filter action {other}"))),
    }
}

#[derive(Debug, Clone)]
enum Predicate {
    JobId(Filter),
    OpCode(Filter),
    Reason(Filter),
}

fn parse_predicate(v: &Value, watermark: u64) -> Result<Predicate, FilterRuleError> {
    let (kind, filter) = match v.as_array().map(Vec::as_slice) {
        Some([Value::String(kind), filter]) => (kind.as_str(), filter),
        _ => return Err(invalid(format!("A predicate is [name, filter], got {v}"))),
    };
    let mut filter =
        Filter::parse(filter).map_err(|e| invalid(format!("Predicate '{kind}': {e}")))?;
    match kind {
        "jobid" => {
            if let Some(f) = filter.fields().into_iter().find(|f| *f != "id") {
                return Err(invalid(format!(
                    "Predicate 'jobid' only knows the field 'id', not '{f}'"
                )));
            }
            filter.substitute(&json!("watermark"), &json!(watermark));
            Ok(Predicate::JobId(filter))
        }
        "opcode" => Ok(Predicate::OpCode(filter)),
        "reason" => {
            if let Some(f) = filter
                .fields()
                .into_iter()
                .find(|f| !["source", "reason", "timestamp"].contains(f))
            {
                return Err(invalid(format!("Predicate 'reason' has no field '{f}'")));
            }
            Ok(Predicate::Reason(filter))
        }
        other => Err(invalid(format!("Unknown predicate '{other}'"))),
    }
}

/// Reads a dotted path (`beparams.memory`) out of an opcode's JSON.
fn dotted(op: &Value, path: &str) -> Option<Value> {
    path.split('.').try_fold(op, |v, key| v.get(key)).cloned()
}

impl Predicate {
    fn matches(&self, job: &Job) -> bool {
        match self {
            Predicate::JobId(f) => f.matches(&|_| Some(json!(job.id.0))),
            Predicate::OpCode(f) => job.ops.iter().any(|op| {
                let op = op.input.to_json();
                f.matches(&|name| dotted(&op, name))
            }),
            Predicate::Reason(f) => job.ops.iter().any(|op| {
                let trail = op.input.get("reason").and_then(Value::as_array);
                trail.into_iter().flatten().any(|entry| {
                    f.matches(&|name| match name {
                        "source" => entry.get(0).cloned(),
                        "reason" => entry.get(1).cloned(),
                        _ => entry.get(2).cloned(),
                    })
                })
            }),
        }
    }
}

/// A stored rule with its predicates parsed, ready for the scheduler.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: FilterRule,
    pub action: Action,
    predicates: Vec<Predicate>,
}

impl CompiledRule {
    /// Checks a rule the way luxid's `ReplaceFilter` does before it is stored.
    pub fn compile(rule: FilterRule) -> Result<CompiledRule, FilterRuleError> {
        if rule.priority < 0 {
            return Err(invalid(format!(
                "Filter priority must be non-negative, got {}",
                rule.priority
            )));
        }
        let action = parse_action(&rule.action)?;
        let predicates = rule
            .predicates
            .iter()
            .map(|p| parse_predicate(p, rule.watermark))
            .collect::<Result<_, _>>()?;
        Ok(CompiledRule {
            rule,
            action,
            predicates,
        })
    }

    fn matches(&self, job: &Job) -> bool {
        self.predicates.iter().all(|p| p.matches(job))
    }

    fn order_key(&self) -> (i64, u64, &str) {
        (self.rule.priority, self.rule.watermark, &self.rule.uuid)
    }
}

/// Sorts rules into the order they are consulted: priority, then watermark, then uuid.
pub fn sort_rules(rules: &mut [CompiledRule]) {
    rules.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
}

/// The first applicable rule for a job: its action and the rule's uuid. `Accept` when none.
pub fn decide<'a>(rules: &'a [CompiledRule], job: &Job) -> (Action, Option<&'a str>) {
    rules
        .iter()
        .filter(|r| r.action != Action::Continue)
        .find(|r| r.matches(job))
        .map(|r| (r.action, Some(r.rule.uuid.as_str())))
        .unwrap_or((Action::Accept, None))
}

/// Ad-hoc rate-limit buckets from reason texts `rate-limit:<n>:<label>` (jobs.md §19).
pub fn rate_limit_buckets(job: &Job) -> Vec<(String, usize)> {
    let mut buckets = vec![];
    for op in &job.ops {
        let trail = op.input.get("reason").and_then(Value::as_array);
        for entry in trail.into_iter().flatten() {
            let text = entry.get(1).and_then(Value::as_str).unwrap_or("");
            let Some(rest) = text.strip_prefix("rate-limit:") else {
                continue;
            };
            if let Some((n, _label)) = rest.split_once(':')
                && let Ok(n) = n.parse::<usize>()
                && n > 0
            {
                let bucket = rest.to_string();
                if !buckets.iter().any(|(b, _)| *b == bucket) {
                    buckets.push((bucket, n));
                }
            }
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobqueue::job::{JobId, Timestamp};
    use crate::opcodes::OpCode;

    fn job(id: u64, reason: &str) -> Job {
        let op = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.0,
            "reason": [["gnt:user", reason, 0]]}))
        .unwrap();
        Job::new(JobId(id), vec![op], Timestamp::now())
    }

    fn rule(priority: i64, predicates: Value, action: Value) -> CompiledRule {
        CompiledRule::compile(FilterRule {
            uuid: format!("uuid-{priority}"),
            priority,
            watermark: 10,
            predicates: serde_json::from_value(predicates).unwrap(),
            action,
            reason_trail: vec![],
        })
        .unwrap()
    }

    #[test]
    fn first_matching_rule_by_priority_decides() {
        let mut rules = vec![
            rule(5, json!([]), json!("REJECT")),
            rule(
                1,
                json!([["jobid", [">", "id", "watermark"]]]),
                json!("PAUSE"),
            ),
            rule(
                0,
                json!([["opcode", ["=", "OP_ID", "OP_TEST_DELAY"]]]),
                json!("CONTINUE"),
            ),
        ];
        sort_rules(&mut rules);
        assert_eq!(decide(&rules, &job(11, "")).0, Action::Pause);
        assert_eq!(decide(&rules, &job(10, "")).0, Action::Reject);
        assert_eq!(decide(&[], &job(1, "")).0, Action::Accept);
    }

    #[test]
    fn reason_predicates_and_ad_hoc_buckets() {
        let r = rule(
            0,
            json!([["reason", ["=~", "reason", "^nightly"]]]),
            json!(["RATE_LIMIT", 2]),
        );
        assert_eq!(
            decide(std::slice::from_ref(&r), &job(1, "nightly backup")).0,
            Action::RateLimit(2)
        );
        assert_eq!(decide(&[r], &job(1, "manual")).0, Action::Accept);
        assert_eq!(
            rate_limit_buckets(&job(1, "rate-limit:3:backups")),
            vec![("3:backups".to_string(), 3)]
        );
        assert!(rate_limit_buckets(&job(1, "rate-limit:x:y")).is_empty());
    }

    #[test]
    fn invalid_rules_are_refused() {
        for (predicates, action, says) in [
            (json!([]), json!("STOP"), "Unknown filter action"),
            (json!([]), json!(["RATE_LIMIT", 0]), "positive integer"),
            (
                json!([["jobid", ["=", "name", 1]]]),
                json!("ACCEPT"),
                "only knows the field 'id'",
            ),
            (
                json!([["owner", ["=", "x", 1]]]),
                json!("ACCEPT"),
                "Unknown predicate",
            ),
            (json!(["jobid"]), json!("ACCEPT"), "[name, filter]"),
        ] {
            let err = CompiledRule::compile(FilterRule {
                uuid: "u".into(),
                priority: 0,
                watermark: 0,
                predicates: serde_json::from_value(predicates).unwrap(),
                action,
                reason_trail: vec![],
            })
            .unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }
}
