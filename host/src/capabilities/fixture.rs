//! Rows for `query` without a database (`pgnotifier call --query-fixture`):
//! a JSON object from SQL to the rows it returns, whatever the parameters.
//!
//! ```json
//! { "SELECT * FROM orders WHERE id = $1": [{"id": 7, "total": 12.5}] }
//! ```
//!
//! SQL matches when it is the same after collapsing whitespace and dropping
//! a trailing `;`.

use super::CapabilityError;
use serde_json::{Map, Value};
use std::path::Path;

/// SQL (normalized) → the rows as the JSON array `query` returns.
#[derive(Debug)]
pub struct QueryFixture {
    name: String,
    answers: Vec<(String, String)>,
}

impl QueryFixture {
    /// Parse a fixture; `path` names it in errors.
    pub fn parse(path: &Path, json: &str) -> Result<Self, CapabilityError> {
        let name = path.display().to_string();
        let bad = |why: String| CapabilityError::Fixture(format!("query fixture {name}: {why}"));
        let object: Map<String, Value> = serde_json::from_str(json).map_err(|e| {
            bad(format!(
                "{e}; expected a JSON object from SQL to rows, such as {{\"SELECT 1 AS n\": [{{\"n\": 1}}]}}"
            ))
        })?;
        let mut answers = Vec::with_capacity(object.len());
        for (sql, rows) in object {
            match &rows {
                Value::Array(items) if items.iter().all(Value::is_object) => {}
                _ => {
                    return Err(bad(format!(
                        "the rows of {sql:?} are not an array of objects"
                    )))
                }
            }
            answers.push((normalize(&sql), rows.to_string()));
        }
        Ok(Self { name, answers })
    }

    /// The rows for `sql`, or an error that lists what the fixture has.
    pub(crate) fn answer(&self, sql: &str) -> Result<String, CapabilityError> {
        let key = normalize(sql);
        match self.answers.iter().find(|(s, _)| *s == key) {
            Some((_, rows)) => Ok(rows.clone()),
            None => {
                let known: Vec<&str> = self.answers.iter().map(|(s, _)| s.as_str()).collect();
                Err(CapabilityError::Fixture(format!(
                    "no rows for {key:?} in the query fixture {}; it has {known:?}",
                    self.name
                )))
            }
        }
    }
}

fn normalize(sql: &str) -> String {
    let sql = sql.trim().trim_end_matches(';');
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_matches_whatever_its_spacing() {
        let path = Path::new("rows.json");
        let fixture =
            QueryFixture::parse(path, r#"{"SELECT *\n FROM t WHERE id = $1": [{"id": 1}]}"#)
                .unwrap();
        assert_eq!(
            fixture.answer("select_not").unwrap_err().to_string(),
            r#"no rows for "select_not" in the query fixture rows.json; it has ["SELECT * FROM t WHERE id = $1"]"#
        );
        assert_eq!(
            fixture.answer("SELECT * FROM t  WHERE id = $1;").unwrap(),
            r#"[{"id":1}]"#
        );
        let bad = QueryFixture::parse(path, r#"{"SELECT 1": 1}"#).unwrap_err();
        assert!(
            bad.to_string().contains("are not an array of objects"),
            "{bad}"
        );
    }
}
