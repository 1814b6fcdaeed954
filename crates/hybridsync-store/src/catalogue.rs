//! The collection catalogue: declared collections, their vector specs and whether
//! they are encrypted, cached in memory and reread when a name is not known (another
//! process may have created it).

use crate::{Error, Result, SqliteStore};
use hybridsync_core::RwLockExt;
use hybridsync_core::{CollectionName, CollectionSpec, Metric, Precision, VectorSpec};
use sqlx::Row;
use std::collections::HashMap;

const SPECS: &str = "SELECT name, dim, metric, precision, encrypted FROM collections";

const CREATE: &str = "INSERT INTO collections (name, dim, metric, precision, encrypted, created_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO NOTHING";

impl SqliteStore {
    pub(crate) async fn reload_catalogue(&self) -> Result<()> {
        let rows = sqlx::query(SPECS).fetch_all(&self.readers).await?;
        let mut specs = HashMap::with_capacity(rows.len());
        for row in rows {
            let spec = spec_from_row(&row)?;
            specs.insert(spec.name.clone(), spec);
        }
        *self.catalogue.write_or_recover() = specs;
        Ok(())
    }

    fn spec(&self, collection: &CollectionName) -> Option<CollectionSpec> {
        self.catalogue.read_or_recover().get(collection).cloned()
    }

    /// The spec of a known collection, rereading the catalogue once in case another
    /// process created it since we loaded it.
    pub(crate) async fn require_spec(&self, collection: &CollectionName) -> Result<CollectionSpec> {
        if let Some(spec) = self.spec(collection) {
            return Ok(spec);
        }
        self.reload_catalogue().await?;
        self.spec(collection)
            .ok_or_else(|| hybridsync_core::Error::UnknownCollection(collection.to_string()).into())
    }

    /// Every collection, by name.
    pub(crate) async fn collections(&self) -> hybridsync_core::Result<Vec<CollectionSpec>> {
        self.reload_catalogue().await?;
        let mut specs: Vec<CollectionSpec> =
            self.catalogue.read_or_recover().values().cloned().collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    /// Declares a collection; the same spec again is a no-op, another spec for the
    /// name is refused.
    pub(crate) async fn create_collection(
        &self,
        spec: &CollectionSpec,
    ) -> hybridsync_core::Result<()> {
        let (dim, metric, precision) = collection_of(spec);
        let created_ms = self.hlc.physical_now_ms() as i64;
        self.writer
            .transaction(1, |tx| {
                tx.prepare_cached(CREATE)?.execute(rusqlite::params![
                    spec.name.as_str(),
                    dim,
                    metric,
                    precision,
                    spec.encrypted,
                    created_ms
                ])?;
                Ok(())
            })
            .await?;
        self.reload_catalogue().await?;
        match self.spec(&spec.name) {
            Some(existing) if existing == *spec => Ok(()),
            _ => Err(hybridsync_core::Error::CollectionSpecMismatch {
                name: spec.name.to_string(),
            }),
        }
    }
}

fn spec_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CollectionSpec> {
    let bad = |detail: String| Error::BadRow {
        table: "collections",
        detail,
    };
    let name: String = row.try_get("name")?;
    let name = CollectionName::new(name).map_err(|e| bad(e.to_string()))?;
    let dim: Option<i64> = row.try_get("dim")?;
    let vector = match dim {
        None => None,
        Some(dim) => {
            let metric: String = row.try_get("metric")?;
            let precision: String = row.try_get("precision")?;
            let metric: Metric = metric
                .parse()
                .map_err(|e: hybridsync_core::Error| bad(e.to_string()))?;
            let precision: Precision = precision
                .parse()
                .map_err(|e: hybridsync_core::Error| bad(e.to_string()))?;
            Some(VectorSpec::new(dim as usize, metric, precision).map_err(|e| bad(e.to_string()))?)
        }
    };
    Ok(CollectionSpec {
        name,
        vector,
        encrypted: row.try_get("encrypted")?,
    })
}

fn collection_of(
    spec: &CollectionSpec,
) -> (Option<i64>, Option<&'static str>, Option<&'static str>) {
    match &spec.vector {
        None => (None, None, None),
        Some(v) => (
            Some(v.dim as i64),
            Some(v.metric.as_str()),
            Some(v.precision.as_str()),
        ),
    }
}
