//! The control socket under abuse, with a real daemon: a file in the
//! socket's place is left alone; a user other than root gets a bounded
//! number of connections and short lines only; hundreds of idle
//! connections and peers sending huge lines without a newline neither keep
//! root's `block` from answering nor blow the daemon's memory up.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use spacefilter_tests::{
    daemon::{DaemonPaths, DaemonProcess, Scratch},
    netns::{Host, Lab},
    require_root,
};

/// The daemon's resident memory, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Raises this process's soft limit on open files to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit), 0);
    }
}

/// Runs `f` on a thread of its own that has become `nobody`:`nogroup`
/// (raw syscalls change the calling thread's credentials only).
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: plain syscalls on this thread's credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        f()
    })
    .join()
    .expect("the nobody thread")
}

/// The first line the daemon sends on `stream`, within `within`.
fn first_line(stream: &UnixStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut line = String::new();
    if let Err(err) = BufReader::new(stream).read_line(&mut line) {
        return format!("(read failed: {err})");
    }
    line
}

#[test]
fn a_file_in_the_socket_s_place_is_left_alone() {
    require_root();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("sockfile").expect("scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    std::fs::write(&paths.socket, b"not a socket").expect("writing a file");
    let mut daemon =
        DaemonProcess::spawn(&lab.ns(Host::Server), &paths, &[]).expect("spawning the daemon");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("the daemon exits");
    assert!(!status.success(), "{}", daemon.log());
    assert!(daemon.log().contains("is not a socket"), "{}", daemon.log());
    assert_eq!(std::fs::read(&paths.socket).unwrap(), b"not a socket");
}

#[test]
fn the_socket_s_limits_hold_and_root_is_still_answered() {
    require_root();
    raise_fd_limit();
    let lab = Lab::new().expect("building the lab");
    let dir = Scratch::new("sockabuse").expect("scratch directory");
    let paths = DaemonPaths::in_dir(dir.path());
    let daemon = DaemonProcess::start(
        &lab.ns(Host::Server),
        &paths,
        &["--socket-group", "nogroup"],
    )
    .expect("starting the daemon");
    let socket: PathBuf = paths.socket.clone();
    // Let nobody reach the socket through the scratch directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // A user other than root: 32 connections, the rest refused; a line
    // past 64 KiB closes the connection.
    let path = socket.clone();
    let (refused, long_line) = as_nobody(move || {
        let open: Vec<UnixStream> = (0..40)
            .map(|_| UnixStream::connect(&path).expect("connecting as nobody"))
            .collect();
        let refused = refusals(&open, 8);
        drop(open);
        let long = admitted(&path);
        let _ = (&long).write_all(&vec![b'x'; 100 << 10]);
        (refused, first_line(&long, Duration::from_secs(5)))
    });
    assert_eq!(refused.len(), 8, "{refused:?}");
    assert!(
        refused.iter().all(|r| r.contains("32 connections open")),
        "{refused:?}"
    );
    assert!(
        long_line.contains("request longer than 65536"),
        "{long_line:?}"
    );

    // Root: a thousand idle connections, and a few peers each sending a
    // huge line without a newline.
    let before = resident_kib(daemon.pid());
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&socket).expect("an idle connection"))
        .collect();
    let floods: Vec<_> = (0..8)
        .map(|_| {
            let path = socket.clone();
            thread::spawn(move || flood_line(&path, 48 << 20))
        })
        .collect();
    // Root still gets its answer promptly.
    let out = daemon.cli(&["block", "198.18.3.3"]);
    out.ok("block during the abuse");
    assert!(
        out.elapsed < Duration::from_secs(2),
        "block took {:?}",
        out.elapsed
    );
    for flood in floods {
        flood.join().expect("a flooding peer");
    }
    let grown_mib = resident_kib(daemon.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 300,
        "the daemon grew by {grown_mib} MiB under the abuse"
    );
    drop(idle);
    // Everything still works.
    daemon.cli(&["list"]).ok("list after the abuse");
}

/// The refusals among the first lines of `streams`, once `expected` of
/// them have come (or five seconds have passed).
fn refusals(streams: &[UnixStream], expected: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = vec![None; streams.len()];
    while got.iter().flatten().count() < expected && std::time::Instant::now() < deadline {
        for (stream, slot) in streams.iter().zip(&mut got) {
            if slot.is_none() {
                let line = first_line(stream, Duration::from_millis(20));
                if !line.is_empty() && !line.starts_with("(read failed") {
                    *slot = Some(line);
                }
            }
        }
    }
    got.into_iter().flatten().collect()
}

/// A connection the daemon took (it answers `status`), once the
/// connections closed before it are no longer counted.
fn admitted(path: &Path) -> UnixStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stream = UnixStream::connect(path).expect("connecting");
        let _ = (&stream).write_all(b"{\"v\":1,\"cmd\":\"status\"}\n");
        let answer = first_line(&stream, Duration::from_secs(2));
        if answer.contains("\"status\"") {
            return stream;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never admitted: {answer}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` of one line without its newline to the socket at `path`,
/// as far as the daemon takes it within a few seconds.
fn flood_line(path: &Path, bytes: usize) {
    let mut stream = UnixStream::connect(path).expect("a flooding connection");
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
}
