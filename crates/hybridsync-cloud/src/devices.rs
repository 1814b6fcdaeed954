//! Devices of a tenant: register (or rename), list, deregister, and last-seen updates
//! (which register a device on first contact).

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{DeviceId, DeviceInfo};
use sqlx::Row;

const REGISTER: &str = "INSERT INTO hs_devices (tenant, device_id, name) VALUES (current_setting('hybridsync.tenant'), $1, $2)
             ON CONFLICT (tenant, device_id) DO UPDATE SET name = excluded.name, last_seen = now()";

const DEVICES: &str = "SELECT device_id, name, (extract(epoch FROM registered_at) * 1000)::int8, (extract(epoch FROM last_seen) * 1000)::int8
             FROM hs_devices WHERE tenant = current_setting('hybridsync.tenant') ORDER BY name, device_id";

const DEREGISTER: &str =
    "DELETE FROM hs_devices WHERE tenant = current_setting('hybridsync.tenant') AND device_id = $1";

const TOUCH: &str = "INSERT INTO hs_devices (tenant, device_id, name) VALUES (current_setting('hybridsync.tenant'), $1, $2)
             ON CONFLICT (tenant, device_id) DO UPDATE SET last_seen = now()";

impl PostgresSink {
    pub(crate) async fn register_device(&self, id: DeviceId, name: &str) -> Result<()> {
        hybridsync_core::validate_device_name(name).map_err(|e| Error::Config(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query(REGISTER)
            .persistent(self.persistent)
            .bind(id.to_string())
            .bind(name)
            .execute(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub(crate) async fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(DEVICES)
            .persistent(self.persistent)
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                Ok(DeviceInfo {
                    id: DeviceId::parse_hex(&id).map_err(|e| Error::BadRow(e.to_string()))?,
                    name: row.try_get(1)?,
                    registered_ms: row.try_get::<i64, _>(2)? as u64,
                    last_seen_ms: row.try_get::<i64, _>(3)? as u64,
                })
            })
            .collect()
    }

    pub(crate) async fn deregister_device(&self, id: DeviceId) -> Result<bool> {
        let mut tx = self.begin().await?;
        let removed = sqlx::query(DEREGISTER)
            .persistent(self.persistent)
            .bind(id.to_string())
            .execute(self.counted(&mut *tx))
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(removed > 0)
    }

    pub(crate) async fn touch_device(&self, id: DeviceId, default_name: &str) -> Result<()> {
        hybridsync_core::validate_device_name(default_name)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query(TOUCH)
            .persistent(self.persistent)
            .bind(id.to_string())
            .bind(default_name)
            .execute(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        Ok(())
    }
}
