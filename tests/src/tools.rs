//! The client programs and tools that `tests/setup.sh` installs, and running them with a time limit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
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

/// A client program running in the background: its output lines are echoed to stderr as they come
/// (labelled), kept, and stdout lines can be awaited, so a test can act at a point of the program's
/// run (SIGSTOP it mid-transaction, kill it after N commits). Killed when dropped.
pub struct RunningClient {
    label: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl RunningClient {
    pub fn spawn(label: &str, mut cmd: Command) -> RunningClient {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        eprintln!("[{label}] started {cmd:?} (pid {})", child.id());
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            echo_lines(format!("{label} stdout"), child.stdout.take().expect("piped stdout"), stdout.clone(), Some(tx)),
            echo_lines(format!("{label} stderr"), child.stderr.take().expect("piped stderr"), stderr.clone(), None),
        ];
        RunningClient { label: label.to_string(), child: Some(child), lines, stdout, stderr, readers }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        let id = self.child.as_ref().expect("running client").id();
        nix::unistd::Pid::from_raw(i32::try_from(id).expect("pid fits in i32"))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGKILL, ...) to the program.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).unwrap_or_else(|e| panic!("{}: send {signal}: {e}", self.label));
    }

    /// Waits for a stdout line starting with `prefix` (lines seen before are consumed) and returns it.
    /// Panics if the program exits first or `limit` passes.
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> String {
        self.try_wait_for_line(prefix, limit).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`wait_for_line`](Self::wait_for_line), but says what went wrong instead of panicking, so
    /// a caller can add context (node logs) to its own panic.
    pub fn try_wait_for_line(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| wait_timeout(c, Duration::from_secs(5)));
                    return Err(format!("{} exited ({status:?}) before printing `{prefix}...`", self.label));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        return Err(format!("{} printed no `{prefix}...` line within {limit:?}", self.label));
                    }
                }
            }
        }
    }

    /// SIGKILLs the program and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the program to exit (killing it after `limit`, then panicking) and returns its output.
    pub fn wait(mut self, limit: Duration) -> ClientOutput {
        let mut child = self.child.take().expect("running client");
        let status = wait_timeout(&mut child, limit);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let status = status.unwrap_or_else(|| panic!("{} did not finish within {limit:?}", self.label));
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        ClientOutput { status, stdout, stderr }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        self.kill();
    }
}

fn echo_lines(
    label: String,
    stream: impl Read + Send + 'static,
    keep: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label}] {line}");
            let mut kept = keep.lock().unwrap();
            kept.push_str(&line);
            kept.push('\n');
            drop(kept);
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    })
}
