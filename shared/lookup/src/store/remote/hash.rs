//! Small records kept as the fields of one Redis hash (the banner's
//! announcements): written and removed one field at a time, read whole.

use super::{Outcome, RedisStore};
use std::collections::HashMap;

impl RedisStore {
    /// Every field of the hash `key` with its value (none when the key is
    /// absent); one round trip.
    pub async fn hash_all(&self, key: &str) -> Outcome<HashMap<String, Vec<u8>>> {
        self.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await
    }

    /// Sets `field` of the hash `key` to `value`; one round trip.
    pub async fn hash_set(&self, key: &str, field: &str, value: &[u8]) -> Outcome<()> {
        self.call(|mut c| async move {
            let _: i64 = redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(value)
                .query_async(&mut c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes `field` of the hash `key`; whether it was there. One round
    /// trip.
    pub async fn hash_remove(&self, key: &str, field: &str) -> Outcome<bool> {
        self.call(|mut c| async move {
            let n: i64 = redis::cmd("HDEL")
                .arg(key)
                .arg(field)
                .query_async(&mut c)
                .await?;
            Ok(n > 0)
        })
        .await
    }
}
