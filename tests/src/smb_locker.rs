//! An SMB client holding byte-range locks (`tests/smb/smb_lock.py`, Python smbprotocol as a
//! guest), driven line by line from a test: one open file, `lock`/`unlock` commands answered
//! with "granted", "denied STATUS", "unlocked" or "error STATUS".

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The client process, with its file open.
pub struct SmbLocker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SmbLocker {
    /// Opens `path` on `share` at `host:port`, from inside network namespace `ns`.
    pub fn open(ns: &str, host: &str, port: u16, share: &str, path: &str) -> SmbLocker {
        crate::require_tool("python3");
        let script = crate::workspace_root().join("tests/smb/smb_lock.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&script)
            .args([host, &port.to_string(), share, path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read smb_lock.py");
        assert_eq!(line.trim(), "ready", "smb_lock.py did not open {path}");
        SmbLocker { child, stdin, stdout }
    }

    /// Sends one command; its answer.
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").expect("write to smb_lock.py");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read smb_lock.py");
        line.trim().to_string()
    }
}

impl Drop for SmbLocker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}
