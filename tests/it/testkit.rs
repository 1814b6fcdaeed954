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

/// An echo server on loopback: writes back whatever it reads, per connection.
fn echo_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

/// Each fault of the proxy does what it says, and the link heals when it is lifted.
#[test]
fn fault_proxy_injects_latency_blackhole_reset_close_after_and_down() {
    use hybridsync_testkit::{Fault, FaultProxy};
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let proxy = FaultProxy::start(echo_server()).unwrap();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    };
    let echo = |s: &mut TcpStream, msg: &[u8]| -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    };

    let mut s = connect();
    assert_eq!(echo(&mut s, b"hello").unwrap(), b"hello");

    proxy.set(Fault::Latency {
        ms: 100,
        jitter_ms: 0,
    });
    let started = Instant::now();
    assert_eq!(echo(&mut s, b"slow").unwrap(), b"slow");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "both ways delayed"
    );

    proxy.set(Fault::Blackhole);
    let err = echo(&mut s, b"void").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    proxy.set(Fault::None);
    let mut late = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.read_exact(&mut late).unwrap();
    assert_eq!(&late, b"void", "held bytes flow once the blackhole lifts");

    proxy.reset();
    std::thread::sleep(Duration::from_millis(100));
    let err = echo(&mut s, b"gone").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        "{err}"
    );
    let mut s = connect();
    assert_eq!(
        echo(&mut s, b"again").unwrap(),
        b"again",
        "new connections work after a reset"
    );

    proxy.set(Fault::CloseAfter { bytes: 6 });
    assert_eq!(
        echo(&mut s, b"abc").unwrap(),
        b"abc",
        "3 + 3 bytes fit the budget"
    );
    assert!(
        echo(&mut s, b"defgh").is_err(),
        "the link is cut past the budget"
    );

    proxy.set(Fault::Down);
    let mut s = connect();
    assert!(
        echo(&mut s, b"down").is_err(),
        "down refuses new connections"
    );
    proxy.set(Fault::None);
    let mut s = connect();
    assert_eq!(echo(&mut s, b"up").unwrap(), b"up");
    assert!(proxy.connections() >= 3);
}
