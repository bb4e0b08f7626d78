//! Durable handles end to end: Python smbprotocol opens a file durably (DH2Q with a lease)
//! as a signing user, writes, locks, drops its TCP connection, and takes the open back with
//! DH2C while a second client is refused the lock meanwhile (`tests/smb/durable_check.py`).

mod smb_common;

use smb_common::{start, ALICE_PASSWORD};

#[test]
fn a_durable_open_survives_its_connection_with_data_and_lock() {
    nasgw_tests::require_tool("python3");
    let s = start("durable", "");
    s.python_checks("durable_check.py", &["priv", "alice", ALICE_PASSWORD], "durable handle checks");
    let logs = s.daemon.logs();
    assert!(logs.contains("durable open is kept for a reconnect"), "the server kept the open:\n{logs}");
    assert!(logs.contains("durable open reconnected"), "the server handed it back:\n{logs}");
}
