//! The client programs and tools that `tests/setup.sh` installs, and running them with a time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const SETUP_HINT: &str = "run `bash tests/setup.sh` (or `bash tests/run.sh`, which runs it)";

/// The `tests/` directory of the repository.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/clients/<rel>`; panics if it does not exist.
pub fn client_path(rel: &str) -> PathBuf {
    let path = tests_dir().join("clients").join(rel);
    assert!(path.exists(), "client program {} is missing", path.display());
    path
}

/// The Python interpreter of `tests/.venv`, where setup.sh installs confluent-kafka, kafka-python and aiokafka.
pub fn venv_python() -> PathBuf {
    let python = tests_dir().join(".venv/bin/python");
    assert!(python.is_file(), "{} is missing: {SETUP_HINT}", python.display());
    python
}

/// `node`, after checking that `tests/clients/node/node_modules` holds kafkajs.
pub fn node() -> PathBuf {
    let modules = tests_dir().join("clients/node/node_modules/kafkajs");
    assert!(modules.is_dir(), "{} is missing: {SETUP_HINT}", modules.display());
    find_on_path("node")
}

/// `kcat` from PATH.
pub fn kcat() -> PathBuf {
    find_on_path("kcat")
}

fn find_on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: {SETUP_HINT}"))
}

/// What a finished client program printed.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it after `limit`; its output is echoed to stderr for the test log.
/// Panics if it cannot start or overruns the limit.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> ClientOutput {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = read_all(child.stdout.take().expect("piped stdout"));
    let err = read_all(child.stderr.take().expect("piped stderr"));
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    eprintln!("--- {cmd:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    ClientOutput { status, stdout, stderr }
}

/// Runs a client program and asserts that it exits 0 and prints `OK <client> ...`; returns that line.
pub fn run_client_ok(client: &str, cmd: Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run_with_limit(cmd, limit);
    // The programs print `FAIL <client>: <what>`; else show the last line of stderr.
    let last_err = out
        .stderr
        .lines()
        .find(|l| l.starts_with("FAIL "))
        .or_else(|| out.stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    assert!(out.status.success(), "{client} failed ({}): {last_err}\ncommand: {shown}", out.status);
    let prefix = format!("OK {client} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{client} exited 0 but printed no `{prefix}...` line:\n{}", out.stdout))
        .to_string()
}

/// Waits for `child` to exit for at most `limit`; `None` if it still runs.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // std has no wait-with-timeout; polling a child's exit is not synchronising on its work.
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A `Command` for `program` with its working directory set to `dir`.
pub fn command_in(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    cmd
}
