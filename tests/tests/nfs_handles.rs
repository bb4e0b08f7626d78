//! File handles and write safety across server restarts and crashes: a handle keeps naming
//! its file after a restart and renames made while the server was down, turns STALE when the
//! file is deleted (never another file's data), and acknowledged stable writes survive kill -9
//! while the write verifier changes so clients resend unstable data.

mod nfs_common;

use nfs3_types::nfs3::{nfsstat3, stable_how};
use nfs_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_survive_restarts_and_renames_and_go_stale_on_delete() {
    let mut srv = Server::start("handles", "root_squash = false");
    let (fh, dir_fh, other_fh) = {
        let mut c = mount(srv.port, 0, 0).await;
        let root = c.root_nfs_fh3();
        let dir = mkdir(&mut c, &root, "d").await.unwrap();
        let f = create(&mut c, &dir, "f.txt", 0o644).await.unwrap();
        write(&mut c, &f, 0, b"the right file", stable_how::FILE_SYNC).await.unwrap();
        let o = create(&mut c, &root, "other.txt", 0o644).await.unwrap();
        write(&mut c, &o, 0, b"to be deleted", stable_how::FILE_SYNC).await.unwrap();
        (f, dir, o)
    };
    srv.stop();

    // While the server is down: move the file and its directory, and make decoys.
    let data = srv.data();
    std::fs::create_dir(data.join("e")).unwrap();
    std::fs::rename(data.join("d/f.txt"), data.join("e/renamed.txt")).unwrap();
    std::fs::rename(data.join("d"), data.join("d2")).unwrap();
    std::fs::write(data.join("d2/f.txt"), b"a decoy with the old name").unwrap();
    srv.restart();

    let mut c = mount(srv.port, 0, 0).await;
    assert_eq!(read(&mut c, &fh, 0, 100).await.unwrap().0, b"the right file", "old handle, new process, renamed file");
    assert_eq!(getattr(&mut c, &dir_fh).await.unwrap().type_, nfs3_types::nfs3::ftype3::NF3DIR);
    let (names, _) = list(&mut c, &dir_fh, false, 4096).await;
    assert_eq!(names, vec![b"f.txt".to_vec()], "the directory handle names the renamed directory");

    // Deleted while down, new files created after: STALE, never their data.
    srv.stop();
    std::fs::remove_file(data.join("other.txt")).unwrap();
    for i in 0..50 {
        std::fs::write(data.join(format!("new{i}.txt")), b"someone else's data").unwrap();
    }
    srv.restart();
    let mut c = mount(srv.port, 0, 0).await;
    assert_eq!(read(&mut c, &other_fh, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    assert_eq!(getattr(&mut c, &other_fh).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    // Deleted while the server runs (its descriptor is cached): STALE too.
    std::fs::remove_file(data.join("e/renamed.txt")).unwrap();
    assert_eq!(read(&mut c, &fh, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_writes_survive_kill_9_and_the_verifier_changes_on_restart() {
    let mut srv = Server::start("durable", "root_squash = false");
    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, "ledger", 0o644).await.unwrap();
    let chunk = vec![0xabu8; 64 * 1024];
    let mut acked = 0u64;
    for i in 0..32u64 {
        let how = if i % 2 == 0 { stable_how::FILE_SYNC } else { stable_how::DATA_SYNC };
        let w = write(&mut c, &f, i * chunk.len() as u64, &chunk, how).await.unwrap();
        assert_eq!(w.committed, how, "the reply says the asked stability was reached");
        acked += u64::from(w.count);
    }
    let u = write(&mut c, &f, acked, b"unstable tail", stable_how::UNSTABLE).await.unwrap();
    assert_eq!(u.committed, stable_how::UNSTABLE);
    let before = u.verf;
    assert_eq!(commit(&mut c, &f).await.unwrap(), before, "COMMIT answers the same verifier within one start");
    drop(c);

    srv.kill();
    srv.restart();
    let mut c = mount(srv.port, 0, 0).await;
    let mut got = Vec::new();
    loop {
        let (data, eof) = read(&mut c, &f, got.len() as u64, 1 << 20).await.unwrap();
        got.extend_from_slice(&data);
        if eof {
            break;
        }
    }
    assert!(got.len() as u64 >= acked, "every acknowledged stable byte is there after kill -9");
    assert!(got[..acked as usize].iter().all(|&b| b == 0xab));
    let after = commit(&mut c, &f).await.unwrap();
    assert_ne!(after, before, "a new start has a new write verifier, so clients resend unstable data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_minted_by_one_node_works_on_another() {
    // Two nodes of one cluster serving the same volume (a shared directory stands in for the
    // GlusterFS mount): a client whose address moved to the other node keeps its handles.
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("volume");
    std::fs::create_dir(&shared).unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"cluster secret for the test").unwrap();
    let ports = [nasgw_tests::free_port(), nasgw_tests::free_port()];
    let nodes: Vec<nasgw_tests::Daemon> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let cfg = format!(
                "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n\n[nfs]\nlisten = \"127.0.0.1:{port}\"\nroot_squash = false\n\n[smb]\nenabled = false\n\n[cluster]\nnodes = [\"127.0.0.1\", \"127.0.0.2\"]\nrecovery_lock = \"/.lock\"\nsecret_file = \"{}\"\n\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
                shared.display(),
                secret.display()
            );
            nasgw_tests::Daemon::start(&format!("node{i}"), &tmp.path().join(format!("node{i}")), &cfg, None)
        })
        .collect();
    for port in ports {
        nasgw_tests::wait_for(
            "NFS port",
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
    }
    let mut a = mount(ports[0], 0, 0).await;
    let root = a.root_nfs_fh3();
    let f = create(&mut a, &root, "shared.txt", 0o644).await.unwrap();
    write(&mut a, &f, 0, b"written via node 0", stable_how::FILE_SYNC).await.unwrap();
    let mut b = mount(ports[1], 0, 0).await;
    assert_eq!(b.root_nfs_fh3().data, root.data, "both nodes hand out the same root handle");
    assert_eq!(read(&mut b, &f, 0, 100).await.unwrap().0, b"written via node 0", "node 1 honours node 0's handle");
    drop(nodes);
}
