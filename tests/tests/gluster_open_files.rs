//! `[volume] open_files`: a nasgw node keeps at most that many files open on a GlusterFS
//! volume's bricks, over its managed FUSE mount and over libgfapi. Every descriptor it caches is
//! an open file on a brick, whose open-files limit all the volume's clients share: before the
//! limit, one nasgw writing 10,000 files held ~9,000 open on the brick, and two such nodes ran
//! a brick (limit 20,000 here, 65,536 under the packaged glusterd.service) out of descriptors,
//! so every client's create failed with EMFILE. Files whose descriptors were closed must keep
//! their data: the test writes through NFS, commits each file, and reads every byte back
//! through a plain FUSE client of the volume.

mod nfs_common;

use std::time::Duration;

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::netns::enter;
use nasgw_tests::{wait_for, Daemon};
use nfs3_types::nfs3::stable_how;
use nfs_common::*;

/// Files written through each access mode.
const FILES: usize = 120;
/// The limit under test.
const OPEN_FILES: usize = 16;

fn config(volume: &str, port: u16) -> String {
    format!(
        "{volume}open_files = {OPEN_FILES}\n\
         [nfs]\nlisten = \"127.0.0.1:{port}\"\nroot_squash = false\n[smb]\nenabled = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

/// Regular files of the brick the brick process holds open (clients' open files: the brick
/// opens them by their GFID handle under `.glusterfs`).
fn brick_open_files(pid: u32, brick: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(brick) && std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file()))
        .count()
}

fn content(i: usize) -> Vec<u8> {
    format!("file {i} ").repeat(400).into_bytes()
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_keeps_at_most_open_files_open_on_the_bricks_and_loses_no_data() {
    let cluster = GlusterCluster::start(GlusterSpec { nodes: 1, replica: 1, ..Default::default() });
    let brick = cluster.dir().join("n1").join("brick");
    let pid = cluster.brick_pids()[0].expect("the brick runs");
    let raw = cluster.mount("n1", &cluster.dir().join("raw"));
    let topo = cluster.topo();
    for (i, access) in ["fuse", "gfapi"].into_iter().enumerate() {
        let port = 2049 + i as u16;
        let d = Daemon::start(
            &format!("nasgw-{access}"),
            &cluster.dir().join(format!("d-{access}")),
            &config(&cluster.nasgw_volume_toml(0, access), port),
            Some(topo.ns("n1")),
        );
        enter(topo.ns("n1"));
        let mut c = wait_for_nfs(port).await;
        let root = c.root_nfs_fh3();
        let dir = mkdir(&mut c, &root, access).await.expect("mkdir");
        let before = brick_open_files(pid, &brick);
        let mut files = Vec::new();
        let mut most = 0;
        for n in 0..FILES {
            let fh = create(&mut c, &dir, &format!("f{n:04}"), 0o644).await.expect("create");
            write(&mut c, &fh, 0, &content(n), stable_how::UNSTABLE).await.expect("write");
            files.push(fh);
            most = most.max(brick_open_files(pid, &brick));
        }
        // Commit every file: those whose descriptor was closed are opened again.
        for fh in &files {
            commit(&mut c, fh).await.expect("commit");
            most = most.max(brick_open_files(pid, &brick));
        }
        println!(
            "{access}: {FILES} files written and committed with open_files = {OPEN_FILES}: at most {most} open on \
             the brick (before: {before})"
        );
        // Descriptors beyond the limit are closed off the request path, so a few may still be
        // closing when the next opens: a margin, far below one per file as without the limit.
        assert!(
            most <= before + 2 * OPEN_FILES,
            "{access}: {most} files open on the brick at once, the limit is {OPEN_FILES} (before: {before})"
        );
        // Once those closes are done, the limit itself (+1: the health probe's file).
        wait_for("the brick's open files within the limit", Duration::from_secs(20), Duration::from_millis(50), || {
            (brick_open_files(pid, &brick) <= before + OPEN_FILES + 1).then_some(())
        });
        // Every byte through another client of the volume.
        for n in 0..FILES {
            let p = raw.join(access).join(format!("f{n:04}"));
            assert_eq!(
                std::fs::read(&p).unwrap_or_default(),
                content(n),
                "{access}: {} as a FUSE client reads it",
                p.display()
            );
        }
        // And through nasgw again (reopened where closed).
        let (data, _) = read(&mut c, &files[0], 0, 65536).await.expect("read");
        assert_eq!(data, content(0), "{access}: the first file read back through NFS");
        drop(c);
        d.stop();
    }
    cluster.unmount(&raw);
}

/// An NFS connection to nasgw on `port` once it answers (the volume mounts in the background).
async fn wait_for_nfs(port: u16) -> Conn {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        match mount_as(port, "/smb", unix(0, 0, vec![])).await {
            Ok(c) => return c,
            Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("nasgw on port {port} never answered MOUNT: {e:?}"),
        }
    }
}
