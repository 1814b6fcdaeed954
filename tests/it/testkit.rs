//! The test kit's throwaway servers: real processes on free loopback ports.

use hybridsync_testkit::{ShutdownMode, TempPostgres, TempPostgresOptions, TempRedis};

#[test]
fn temp_postgres_starts_restarts_and_is_removed() {
    let options = TempPostgresOptions {
        max_connections: 12,
        ..Default::default()
    };
    let pg = TempPostgres::with_options(options).unwrap();
    assert_eq!(pg.psql("postgres", "SHOW max_connections").unwrap(), "12");
    pg.psql(
        "postgres",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (42)",
    )
    .unwrap();

    pg.restart(ShutdownMode::Immediate).unwrap();
    assert_eq!(
        pg.psql("postgres", "SELECT v FROM t").unwrap(),
        "42",
        "data survives a crash restart"
    );
    pg.stop(ShutdownMode::Fast).unwrap();
    assert!(
        pg.psql("postgres", "SELECT 1").is_err(),
        "a stopped server refuses connections"
    );
    pg.start_again().unwrap();
    assert_eq!(pg.psql("postgres", "SELECT v FROM t").unwrap(), "42");

    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    drop(pg);
    assert!(!dir.exists(), "the cluster directory is removed on drop");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is gone"
    );
}

#[test]
fn two_temp_postgres_servers_are_isolated() {
    let (a, b) = (
        TempPostgres::start().unwrap(),
        TempPostgres::start().unwrap(),
    );
    assert_ne!(a.port(), b.port());
    a.psql("postgres", "CREATE TABLE only_in_a (v int)")
        .unwrap();
    assert!(b.psql("postgres", "SELECT * FROM only_in_a").is_err());
}

#[test]
fn temp_redis_answers_dies_and_comes_back() {
    let mut redis = TempRedis::start().unwrap();
    assert!(redis.ping());
    redis.kill();
    assert!(!redis.ping());
    redis.start_again().unwrap();
    assert!(redis.ping());
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}
