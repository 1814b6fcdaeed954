//! The [`CloudSink`] implementation: each operation under one name, implemented in
//! the module of its concern (pool, upsert, feed, catalogue, devices, verify) with this crate's
//! [`Error`](crate::Error), converted to the core error here.

use crate::PostgresSink;
use hybridsync_core::{
    ChangeBatch, ChangeCursor, CloudSink, CollectionName, CollectionSpec, DeviceId, DeviceInfo,
    Key, NodeDigest, Record, RowDigest,
};
use std::collections::BTreeMap;

#[async_trait::async_trait]
impl CloudSink for PostgresSink {
    async fn upsert_batch(&self, records: &[Record]) -> hybridsync_core::Result<()> {
        PostgresSink::upsert_batch(self, records).await?;
        Ok(())
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> hybridsync_core::Result<ChangeBatch> {
        Ok(PostgresSink::pull(self, collection, cursor, limit).await?)
    }

    async fn count(&self, collection: &CollectionName) -> hybridsync_core::Result<u64> {
        Ok(PostgresSink::count(self, collection).await?)
    }

    async fn publish_collections(
        &self,
        specs: &[CollectionSpec],
    ) -> hybridsync_core::Result<Vec<CollectionSpec>> {
        Ok(PostgresSink::publish_collections(self, specs).await?)
    }

    async fn remote_collections(&self) -> hybridsync_core::Result<Vec<CollectionSpec>> {
        Ok(PostgresSink::remote_collections(self).await?)
    }

    async fn health_check(&self) -> hybridsync_core::Result<()> {
        Ok(PostgresSink::health_check(self).await?)
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> hybridsync_core::Result<BTreeMap<u32, NodeDigest>> {
        Ok(PostgresSink::tree_nodes(self, collection, level, parents, parents_level).await?)
    }

    async fn bucket_digests(
        &self,
        collection: &CollectionName,
        level: u32,
        buckets: &[u32],
    ) -> hybridsync_core::Result<Vec<RowDigest>> {
        Ok(PostgresSink::bucket_digests(self, collection, level, buckets).await?)
    }

    async fn fetch_rows(
        &self,
        collection: &CollectionName,
        keys: &[Key],
    ) -> hybridsync_core::Result<Vec<Record>> {
        Ok(PostgresSink::fetch_rows(self, collection, keys).await?)
    }

    async fn damaged_keys(&self, collection: &CollectionName) -> hybridsync_core::Result<Vec<Key>> {
        Ok(PostgresSink::damaged_keys(self, collection).await?)
    }

    async fn verify_schema(&self) -> hybridsync_core::Result<()> {
        Ok(PostgresSink::verify_schema(self).await?)
    }

    async fn close(&self) {
        PostgresSink::close(self).await;
    }

    async fn register_device(&self, id: DeviceId, name: &str) -> hybridsync_core::Result<()> {
        Ok(PostgresSink::register_device(self, id, name).await?)
    }

    async fn list_devices(&self) -> hybridsync_core::Result<Vec<DeviceInfo>> {
        Ok(PostgresSink::list_devices(self).await?)
    }

    async fn deregister_device(&self, id: DeviceId) -> hybridsync_core::Result<bool> {
        Ok(PostgresSink::deregister_device(self, id).await?)
    }

    async fn touch_device(&self, id: DeviceId, default_name: &str) -> hybridsync_core::Result<()> {
        Ok(PostgresSink::touch_device(self, id, default_name).await?)
    }

    async fn next_change(&self, seen: u64) -> u64 {
        self.ensure_listening();
        let mut changes = self.changes.subscribe();
        let now = changes.wait_for(|n| *n > seen).await.map(|n| *n);
        match now {
            Ok(n) => n,
            Err(_) => std::future::pending().await,
        }
    }

    fn load(&self) -> f64 {
        self.pool_load()
    }

    fn busy_now(&self) -> f64 {
        self.busy_share()
    }

    fn pool_size(&self) -> (u32, u32) {
        (self.pool.size(), self.max_connections)
    }

    fn pool_stats(&self) -> hybridsync_core::PoolStats {
        PostgresSink::pool_stats(self)
    }
}
