//! What client-side encryption costs: the drain and a new device's hydrate of an
//! encrypted 192-D collection next to the same collection in plaintext, the same rows,
//! on the same server, in the same run.

use crate::drain::{TRIALS, drain_trial, durable_server, rows, settle};
use crate::replicate::hydrate_trial;
use crate::report::{Row, median};
use anyhow::Result;
use hybridsync::{CloudUrl, EncryptionKey};
use sqlx::Connection;

/// [`TRIALS`] trials, each on a fresh server: both sides drain `n` records into a
/// tenant of their own and hydrate them into a new device, taking turns at going first.
pub(crate) async fn run(n: usize) -> Result<Vec<Row>> {
    println!(
        "encryption: drain and hydrate of {n} records, encrypted against plaintext, {TRIALS} trials"
    );
    let data = rows(n);
    let (key, _) = EncryptionKey::generate();
    let (mut drains, mut hydrates) = ([vec![], vec![]], [vec![], vec![]]);
    for trial in 0..TRIALS {
        let pg = durable_server().await?;
        let admin_url = CloudUrl::new(pg.url("postgres"));
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
        let order = if trial % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for sealed in order {
            let tenant = if sealed { "sealed" } else { "plain" };
            hybridsync::cloud::grant_tenant(&admin_url, Some("app"), tenant).await?;
            let key = sealed.then_some(&key);
            settle(&mut admin).await?;
            drains[usize::from(sealed)].push(drain_trial(&pg, &data, tenant, key).await?);
            settle(&mut admin).await?;
            hydrates[usize::from(sealed)].push(hydrate_trial(&pg, tenant, key, n).await?);
        }
    }
    let show = |label: &str, values: &[f64]| {
        let shown: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
        println!("  {label:<31} {}", shown.join(" / "));
    };
    show("drain, encrypted, records/s:", &drains[1]);
    show("drain, plaintext, records/s:", &drains[0]);
    show("hydrate, encrypted, records/s:", &hydrates[1]);
    show("hydrate, plaintext, records/s:", &hydrates[0]);
    let [mut dp, mut ds] = drains;
    let [mut hp, mut hs] = hydrates;
    Ok(vec![
        Row::throughput(
            "drain_encrypted_192d",
            median(&mut ds),
            "drain_plaintext_192d",
            median(&mut dp),
            ">= 0.8x",
        ),
        Row::throughput(
            "hydrate_encrypted_192d",
            median(&mut hs),
            "hydrate_plaintext_192d",
            median(&mut hp),
            ">= 0.8x",
        ),
    ])
}
