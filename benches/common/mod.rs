//! Fixtures shared by the session benchmarks (`session.rs`, `redis.rs`).

use std::collections::HashMap;

use serde_json::{Value, json};
use tower_sessions::session::{Id, Record};

/// About 200 bytes of session data: a view counter, a user object, a CSRF token and an empty
/// flash list.
pub fn data(i: usize) -> HashMap<String, Value> {
    let mut data = HashMap::new();
    data.insert("views".into(), json!(i % 97));
    data.insert(
        "user".into(),
        json!({"id": i, "name": format!("user-{i}"), "roles": ["reader", "commenter"]}),
    );
    data.insert("csrf".into(), json!(format!("{:032x}", i * 7919)));
    data.insert("flash".into(), json!([]));
    data
}

/// `n` tower-sessions records expiring in an hour (ids from `id_base`), and the same records
/// expiring in two hours (what a touch writes).
pub fn records(n: usize, id_base: i128) -> (Vec<Record>, Vec<Record>) {
    let now = time::OffsetDateTime::now_utc();
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            id: Id(id_base + i as i128 * 0x9e37_79b9),
            data: data(i),
            expiry_date: now + time::Duration::hours(1),
        })
        .collect();
    let renewed = records
        .iter()
        .map(|r| Record {
            expiry_date: now + time::Duration::hours(2),
            ..r.clone()
        })
        .collect();
    (records, renewed)
}

/// A session operation measured by both benchmarks.
#[derive(Clone, Copy)]
pub enum Op {
    Get,
    Set,
    Touch,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Touch => "touch",
        }
    }
}
