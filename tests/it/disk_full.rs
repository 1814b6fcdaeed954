//! A full disk under the store: writes fail with a typed error and change nothing,
//! every acknowledged write stays readable, the file stays healthy, and writes resume
//! once there is room. On a real tmpfs of a few MiB (mounting needs root; the CI runs
//! as root).

use hybridsync::{HybridStore, WriteOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn fill(path: &Path, bytes: u64) {
    std::fs::write(path, vec![0xa5u8; bytes as usize]).unwrap();
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_acknowledged_ones_and_recovers() {
    let Some(disk) = SmallDisk::mount("4m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must mount the tmpfs for this test"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.path.join("data");
    let store = HybridStore::builder(&data).open().await.unwrap();
    store.create_collection("notes", None).await.unwrap();
    let notes = store.raw("notes").unwrap();
    // Leave about 600 KiB free, held by a file we can delete later.
    let filler = disk.path.join("filler");
    fill(&filler, disk.free_bytes().saturating_sub(600 << 10));
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let key = format!("k{}", acknowledged.len());
        match notes
            .put(&key, vec![7u8; 8 << 10], WriteOptions::default())
            .await
        {
            Ok(_) => acknowledged.push(key),
            Err(e) => break e,
        }
        assert!(acknowledged.len() < 10_000, "the disk never filled");
    };
    eprintln!("{} writes fit; then: {refusal}", acknowledged.len());
    assert!(refusal.is_storage_full(), "typed: {refusal:?}");
    assert!(
        !acknowledged.is_empty(),
        "some writes fit before the disk filled"
    );
    for key in &acknowledged {
        assert!(notes.get(key).await.unwrap().is_some(), "{key} lost");
    }
    assert!(
        notes
            .get(&format!("k{}", acknowledged.len()))
            .await
            .unwrap()
            .is_none(),
        "the refused write left nothing"
    );
    store.close().await;

    // Room again: the file opens healthy (open runs `quick_check`), every acknowledged
    // write is there, and writing works.
    std::fs::remove_file(&filler).unwrap();
    let store = HybridStore::builder(&data).open().await.unwrap();
    let notes = store.raw("notes").unwrap();
    for key in &acknowledged {
        assert!(
            notes.get(key).await.unwrap().is_some(),
            "{key} lost after reopen"
        );
    }
    notes
        .put("after", vec![1], WriteOptions::default())
        .await
        .unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(
        status.outbox.pending,
        acknowledged.len() as u64 + 1,
        "every acknowledged write is queued for the cloud, once"
    );
    store.close().await;
}
