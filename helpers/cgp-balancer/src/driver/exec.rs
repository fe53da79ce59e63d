//! The `exec` driver: an administrator's program gets the whole desired
//! state as JSON on stdin and exits 0 once its balancer matches it. The
//! program sees the full state every time, so it is idempotent by design.

use super::{Applied, op_limit, run_program};
use crate::config::ExecConfig;
use crate::state::{Target, Want};
use serde_json::json;
use std::time::Instant;

pub struct Exec {
    group: String,
    cfg: ExecConfig,
}

impl Exec {
    pub fn new(group: &str, cfg: ExecConfig) -> Exec {
        Exec {
            group: group.to_string(),
            cfg,
        }
    }

    pub async fn reconcile(&self, target: &Target, deadline: Instant) -> Result<Applied, String> {
        let input = document(&self.group, target);
        run_program(
            &self.cfg.command,
            input.as_bytes(),
            op_limit(self.cfg.timeout, deadline),
        )
        .await?;
        Ok(Applied { changes: 1 })
    }
}

/// The JSON document the program reads, for example:
/// `{"group":"mail","active":true,"vips":["192.0.2.10"],"servers":[{"address":"10.0.0.5","port":25,"state":"ready","weight":1}]}`.
pub fn document(group: &str, target: &Target) -> String {
    let servers: Vec<_> = target
        .servers
        .iter()
        .map(|(ep, want)| {
            json!({
                "address": ep.ip.to_string(),
                "port": ep.port,
                "state": match want { Want::Ready => "ready", Want::Drain => "drain" },
                "weight": match want { Want::Ready => target.weight.unwrap_or(1), Want::Drain => 0 },
            })
        })
        .collect();
    json!({
        "group": group,
        "active": target.services,
        "vips": target.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "servers": servers,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn document_shape() {
        let mut servers = BTreeMap::new();
        servers.insert("[10.0.0.5]:25".parse().unwrap(), Want::Ready);
        servers.insert("10.0.0.6".parse().unwrap(), Want::Drain);
        let t = Target {
            vips: vec!["192.0.2.10".parse().unwrap()],
            services: true,
            servers,
            weight: Some(3),
        };
        let v: serde_json::Value = serde_json::from_str(&document("mail", &t)).unwrap();
        assert_eq!(
            v,
            json!({"group":"mail","active":true,"vips":["192.0.2.10"],"servers":[
                {"address":"10.0.0.5","port":25,"state":"ready","weight":3},
                {"address":"10.0.0.6","port":null,"state":"drain","weight":0}]})
        );
    }
}
