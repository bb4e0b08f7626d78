//! What a node does about the GlusterFS pool and volume, given `[volume] bricks` and what it sees
//! now: a pure function, [`plan`], of [`Desired`] and [`Observed`] to the [`Step`]s to take.
//! The reconcile loop (`provision/mod.rs`) observes, plans, runs the steps, and observes again.
//!
//! Rules, in order:
//! - A node with no brick in the file has nothing to provision (it only mounts the volume).
//! - Nothing happens until this node's glusterd answers and every local brick's disk is mounted.
//! - **Never recreated, never wiped.** A volume is created only when no reachable brick host's
//!   pool has it, and only by the *founder*, the host of the first brick, once every brick host
//!   answers. A volume whose bricks or replica count differ from the file is a [`Step::Conflict`]:
//!   reported, never changed, except for whole replica sets appended at the end of the list,
//!   which are added (a node added to the file). A brick directory is reset only when it is
//!   empty and lacks the volume's id (a replaced node's new disk); it then heals from its replicas.
//! - **One coordinator.** Pool changes (probe, create, add bricks, options) are made by the first
//!   brick host, in file order, that is connected to the pool and has the volume; the others wait,
//!   so two nodes never race to form two pools.
//! - **A replaced node** (blank glusterd, same address) takes the UUID the pool knows for its
//!   address ([`Step::AdoptUuid`]), so the pool accepts it back and syncs the volume to it.

use std::collections::{BTreeMap, BTreeSet};

/// What the file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The GlusterFS volume's name.
    pub volume: String,
    /// Bricks in order, `HOST:/PATH`.
    pub bricks: Vec<String>,
    /// Copies per file.
    pub replica: u32,
    /// Every third brick is an arbiter (`replica 3 arbiter 1` in GlusterFS's words).
    pub arbiter: bool,
    /// Volume options and their values (the failover defaults plus the file's `options`).
    pub options: BTreeMap<String, String>,
    /// This node's host as the bricks name it; `None` when no brick is on this node.
    pub me: Option<String>,
}

impl Desired {
    /// Brick hosts in file order, each once.
    pub fn hosts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for b in &self.bricks {
            let h = host_of(b);
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }

    /// Bricks per replica set as GlusterFS counts them (an arbiter is one of the set).
    pub fn set_size(&self) -> usize {
        if self.arbiter {
            self.replica as usize + 1
        } else {
            self.replica as usize
        }
    }

    /// This node's bricks.
    pub fn my_bricks(&self) -> Vec<&str> {
        match &self.me {
            Some(me) => self.bricks.iter().filter(|b| host_of(b) == me).map(String::as_str).collect(),
            None => Vec::new(),
        }
    }
}

/// The host part of `HOST:/PATH`.
pub fn host_of(brick: &str) -> &str {
    brick.rsplit_once(":/").map_or(brick, |(h, _)| h)
}

/// The path part of `HOST:/PATH`.
pub fn path_of(brick: &str) -> &str {
    brick.rsplit_once(":/").map_or("", |(h, _)| &brick[h.len() + 1..])
}

/// A peer in this node's trusted pool (`gluster pool list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Names and addresses it is known by.
    pub hostnames: Vec<String>,
    /// Its glusterd's UUID.
    pub uuid: String,
    /// Connected right now.
    pub connected: bool,
}

/// The volume as a glusterd describes it (`gluster volume info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Started (serving) rather than Created or Stopped.
    pub started: bool,
    /// Bricks in order, `HOST:/PATH`, each with the UUID of the glusterd that hosts it.
    pub bricks: Vec<(String, String)>,
    /// Copies per file, counting an arbiter (GlusterFS's replicaCount).
    pub replica_count: u32,
    /// Arbiter bricks per set.
    pub arbiter_count: u32,
    /// Options set on the volume.
    pub options: BTreeMap<String, String>,
}

/// A local brick directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrickDir {
    /// Its disk (the brick's parent directory) is not mounted yet.
    NotMounted,
    /// Mounted; the brick directory is absent or empty and carries no volume id.
    Blank,
    /// Carries this volume's id: a live brick.
    Ours,
    /// Has files or another volume's id: never touched.
    Foreign,
}

/// What this node sees now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// This node's glusterd answers the CLI.
    pub glusterd_up: bool,
    /// This node's glusterd UUID.
    pub my_uuid: String,
    /// This node's pool, without itself.
    pub peers: Vec<Peer>,
    /// The volume as this node's glusterd knows it.
    pub volume: Option<VolumeInfo>,
    /// Other brick hosts whose glusterd answered, with the volume as *their* pool knows it.
    pub remote: BTreeMap<String, Option<VolumeInfo>>,
    /// This node's bricks (`HOST:/PATH`) and their directories.
    pub local_bricks: BTreeMap<String, BrickDir>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do yet: why.
    Wait(String),
    /// `gluster peer probe HOST`.
    Probe(String),
    /// `gluster volume create` with the file's bricks (never `force`).
    Create,
    /// `gluster volume start`.
    Start,
    /// `gluster volume set NAME KEY VALUE`.
    SetOption(String, String),
    /// `gluster volume add-brick` with these bricks (whole replica sets).
    AddBricks(Vec<String>),
    /// `gluster volume reset-brick B B commit force`: a blank local brick rejoins and heals.
    ResetBrick(String),
    /// Restart glusterd with this UUID, the pool's peers copied from `from`: the pool knows
    /// this node's address by it, and syncs the volume to it.
    AdoptUuid {
        /// The UUID the pool has for this node's address.
        uuid: String,
        /// A brick host whose pool has the volume.
        from: String,
    },
    /// The volume differs from the file in a way nasgw never changes by itself.
    Conflict(String),
    /// Everything matches the file.
    Done,
}

impl Step {
    /// Steps after which the loop stops for this round (nothing more to run now).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Step::Wait(_) | Step::Conflict(_) | Step::Done)
    }
}

/// The steps this node takes now, in order; the last one is terminal when nothing can follow
/// before the next observation.
pub fn plan(want: &Desired, seen: &Observed) -> Vec<Step> {
    let Some(me) = want.me.as_deref() else {
        return vec![Step::Done];
    };
    if !seen.glusterd_up {
        return vec![Step::Wait("this node's glusterd does not answer yet".into())];
    }
    for (b, dir) in &seen.local_bricks {
        if *dir == BrickDir::NotMounted {
            return vec![Step::Wait(format!("the disk of brick {b} is not mounted"))];
        }
    }
    match &seen.volume {
        Some(vol) => member(want, seen, me, vol),
        None => outsider(want, seen, me),
    }
}

/// This node's pool has the volume.
fn member(want: &Desired, seen: &Observed, me: &str, vol: &VolumeInfo) -> Vec<Step> {
    let mut steps = Vec::new();
    let have: Vec<&str> = vol.bricks.iter().map(|(b, _)| b.as_str()).collect();
    let set = want.set_size();
    let replica_ok = vol.replica_count as usize == set && (vol.arbiter_count > 0) == want.arbiter;
    let prefix_ok = have.len() <= want.bricks.len() && have.iter().zip(&want.bricks).all(|(h, w)| h == w);
    if !replica_ok {
        return vec![Step::Conflict(format!(
            "volume {} has replica {} (arbiter {}), the file asks for {set} bricks per set{}; nasgw never changes a volume's layout",
            want.volume,
            vol.replica_count,
            vol.arbiter_count,
            if want.arbiter { " with an arbiter" } else { "" }
        ))];
    }
    if !prefix_ok {
        let extra: Vec<&str> = have.iter().filter(|h| !want.bricks.iter().any(|w| w == *h)).copied().collect();
        let missing: Vec<&str> =
            want.bricks.iter().filter(|w| !have.contains(&w.as_str())).map(String::as_str).collect();
        return vec![Step::Conflict(format!(
            "volume {} has bricks {have:?}, the file lists {:?} (not in the file: {extra:?}; not in the volume: {missing:?}); \
             nasgw only appends whole replica sets and never removes or replaces bricks",
            want.volume, want.bricks
        ))];
    }

    // Every member looks after its own bricks: a blank one (a replaced disk or node) rejoins.
    for b in want.my_bricks() {
        match seen.local_bricks.get(b) {
            Some(BrickDir::Blank) if have.contains(&b) => steps.push(Step::ResetBrick(b.to_string())),
            Some(BrickDir::Foreign) if have.contains(&b) => {
                return vec![Step::Conflict(format!(
                    "brick directory {b} holds files or another volume's id; nasgw never wipes it (move it away to rebuild the brick)"
                ))]
            }
            _ => {}
        }
    }

    let coordinator = want.hosts().into_iter().find(|h| *h == me || peer(seen, h).is_some_and(|p| p.connected));
    if coordinator != Some(me) {
        steps.push(match coordinator {
            Some(c) => Step::Wait(format!("{c} coordinates the pool")),
            None => Step::Wait("no brick host is connected".into()),
        });
        return steps;
    }

    // The coordinator: peers, added bricks, start, options.
    let mut waiting = Vec::new();
    for h in want.hosts() {
        if h == me {
            continue;
        }
        match peer(seen, h) {
            None if seen.remote.contains_key(h) => steps.push(Step::Probe(h.to_string())),
            None => waiting.push(format!("{h} does not answer")),
            Some(p) if !p.connected => waiting.push(format!("{h} is not connected")),
            Some(_) => {}
        }
    }
    if want.bricks.len() > have.len() {
        let added: Vec<String> = want.bricks[have.len()..].to_vec();
        let hosts_ready = added.iter().all(|b| {
            let h = host_of(b);
            h == me || peer(seen, h).is_some_and(|p| p.connected)
        });
        if (want.bricks.len() - have.len()) % want.set_size() != 0 {
            return vec![Step::Conflict(format!(
                "the bricks added to the file, {added:?}, are not whole replica sets"
            ))];
        }
        if hosts_ready {
            steps.push(Step::AddBricks(added));
        } else {
            waiting.push("the hosts of the added bricks to join the pool".into());
        }
    }
    if !vol.started {
        steps.push(Step::Start);
    }
    for (k, v) in &want.options {
        if vol.options.get(k) != Some(v) {
            steps.push(Step::SetOption(k.clone(), v.clone()));
        }
    }
    if !waiting.is_empty() {
        steps.push(Step::Wait(format!("waiting for {}", waiting.join(", "))));
    } else if steps.is_empty() {
        steps.push(Step::Done);
    }
    steps
}

/// This node's pool does not have the volume: a new cluster, a new node, or a replaced one.
fn outsider(want: &Desired, seen: &Observed, me: &str) -> Vec<Step> {
    // Does some other brick host's pool already have the volume?
    let existing = seen.remote.iter().find_map(|(h, v)| v.as_ref().map(|v| (h, v)));
    if let Some((host, vol)) = existing {
        // The pool knows this address: a replaced node takes the old UUID, else it waits to be
        // synced; unknown to it: a member probes this node (after it is added to the file).
        let known = vol.bricks.iter().find(|(b, _)| host_of(b) == me).map(|(_, uuid)| uuid);
        return match known {
            Some(uuid) if *uuid != seen.my_uuid && seen.peers.is_empty() => {
                vec![Step::AdoptUuid { uuid: uuid.clone(), from: host.clone() }]
            }
            Some(_) => vec![Step::Wait(format!("waiting for the pool ({host}) to sync volume {} here", want.volume))],
            None => vec![Step::Wait(format!("waiting for a pool member ({host}) to add this node"))],
        };
    }
    let hosts = want.hosts();
    let founder = hosts[0];
    if founder != me {
        return vec![Step::Wait(format!(
            "waiting for {founder} (the first brick's host) to create volume {}",
            want.volume
        ))];
    }
    let mut steps = Vec::new();
    let mut waiting = Vec::new();
    for h in hosts.iter().skip(1) {
        match peer(seen, h) {
            Some(p) if p.connected => {}
            Some(_) => waiting.push(format!("{h} is not connected")),
            None if seen.remote.contains_key(*h) => steps.push(Step::Probe(h.to_string())),
            None => waiting.push(format!("{h}'s glusterd does not answer")),
        }
    }
    for b in want.my_bricks() {
        if seen.local_bricks.get(b) == Some(&BrickDir::Foreign) {
            return vec![Step::Conflict(format!(
                "brick directory {b} holds files or another volume's id; nasgw never creates a volume over it"
            ))];
        }
    }
    if !waiting.is_empty() {
        steps.push(Step::Wait(format!("before creating volume {}: {}", want.volume, waiting.join(", "))));
    } else if steps.is_empty() {
        steps.push(Step::Create);
    }
    steps
}

fn peer<'a>(seen: &'a Observed, host: &str) -> Option<&'a Peer> {
    seen.peers.iter().find(|p| p.hostnames.iter().any(|n| n == host))
}

/// The hosts whose pools the loop must ask about (every other brick host).
pub fn hosts_to_ask(want: &Desired) -> BTreeSet<String> {
    want.hosts().into_iter().filter(|h| Some(*h) != want.me.as_deref()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "198.18.0.1";
    const B: &str = "198.18.0.2";
    const C: &str = "198.18.0.3";
    const D: &str = "198.18.0.4";

    fn bricks(hosts: &[&str]) -> Vec<String> {
        hosts.iter().map(|h| format!("{h}:/data/b1/smb")).collect()
    }

    fn want(me: &str, hosts: &[&str]) -> Desired {
        Desired {
            volume: "smb".into(),
            bricks: bricks(hosts),
            replica: 3,
            arbiter: false,
            options: [("network.ping-timeout".to_string(), "5".to_string())].into(),
            me: Some(me.into()),
        }
    }

    fn uuid(h: &str) -> String {
        format!("uuid-{h}")
    }

    fn vol(hosts: &[&str], started: bool, opts: bool) -> VolumeInfo {
        VolumeInfo {
            started,
            bricks: bricks(hosts).into_iter().zip(hosts.iter().map(|h| uuid(h))).collect(),
            replica_count: 3,
            arbiter_count: 0,
            options: if opts {
                [("network.ping-timeout".to_string(), "5".to_string())].into()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// A node `me` whose pool is `peers` (connected) and whose bricks are `dir`.
    fn seen(me: &str, peers: &[&str], volume: Option<VolumeInfo>, dir: BrickDir) -> Observed {
        Observed {
            glusterd_up: true,
            my_uuid: uuid(me),
            peers: peers
                .iter()
                .map(|h| Peer { hostnames: vec![h.to_string()], uuid: uuid(h), connected: true })
                .collect(),
            volume,
            remote: BTreeMap::new(),
            local_bricks: [(format!("{me}:/data/b1/smb"), dir)].into(),
        }
    }

    fn answering(mut o: Observed, hosts: &[&str], v: Option<VolumeInfo>) -> Observed {
        for h in hosts {
            o.remote.insert(h.to_string(), v.clone());
        }
        o
    }

    fn wait(steps: &[Step]) -> bool {
        matches!(steps.last(), Some(Step::Wait(_)))
    }

    #[test]
    fn a_new_cluster_is_founded_by_the_first_brick_host_once_all_answer() {
        let w = want(A, &[A, B, C]);
        // B answers, C not yet: probe B, wait for C, create nothing.
        let o = answering(seen(A, &[], None, BrickDir::Blank), &[B], None);
        let p = plan(&w, &o);
        assert_eq!(p[0], Step::Probe(B.into()));
        assert!(wait(&p) && !p.contains(&Step::Create), "{p:?}");
        // Both answer: probe both.
        let o = answering(seen(A, &[], None, BrickDir::Blank), &[B, C], None);
        assert_eq!(plan(&w, &o), vec![Step::Probe(B.into()), Step::Probe(C.into())]);
        // Both in the pool: create.
        let o = answering(seen(A, &[B, C], None, BrickDir::Blank), &[B, C], None);
        assert_eq!(plan(&w, &o), vec![Step::Create]);
        // Created: start and set the options; started with options: done.
        let o = seen(A, &[B, C], Some(vol(&[A, B, C], false, false)), BrickDir::Ours);
        assert_eq!(plan(&w, &o), vec![Step::Start, Step::SetOption("network.ping-timeout".into(), "5".into())]);
        let o = seen(A, &[B, C], Some(vol(&[A, B, C], true, true)), BrickDir::Ours);
        assert_eq!(plan(&w, &o), vec![Step::Done]);
    }

    #[test]
    fn other_nodes_never_found_a_pool() {
        let o = answering(seen(B, &[], None, BrickDir::Blank), &[A, C], None);
        let p = plan(&want(B, &[A, B, C]), &o);
        assert!(wait(&p) && p.len() == 1, "{p:?}");
        // Even when the founder is down.
        let o = answering(seen(B, &[], None, BrickDir::Blank), &[C], None);
        assert!(wait(&plan(&want(B, &[A, B, C]), &o)));
    }

    #[test]
    fn nothing_happens_before_glusterd_and_the_disks() {
        let mut o = answering(seen(A, &[B, C], None, BrickDir::NotMounted), &[B, C], None);
        assert!(wait(&plan(&want(A, &[A, B, C]), &o)));
        o.local_bricks.values_mut().for_each(|d| *d = BrickDir::Blank);
        o.glusterd_up = false;
        assert!(wait(&plan(&want(A, &[A, B, C]), &o)));
    }

    #[test]
    fn a_node_without_bricks_has_nothing_to_do() {
        let mut w = want(A, &[A, B, C]);
        w.me = None;
        assert_eq!(plan(&w, &Observed::default()), vec![Step::Done]);
    }

    #[test]
    fn an_existing_volume_is_never_recreated() {
        // The founder lost its pool state (new system disk) but B's pool has the volume.
        let v = vol(&[A, B, C], true, true);
        let o = answering(seen(A, &[], None, BrickDir::Ours), &[B, C], Some(v.clone()));
        let p = plan(&want(A, &[A, B, C]), &o);
        assert!(!p.contains(&Step::Create), "{p:?}");
        // Its UUID changed (blank glusterd): it takes the one the pool knows.
        let mut o2 = o.clone();
        o2.my_uuid = "fresh".into();
        assert_eq!(plan(&want(A, &[A, B, C]), &o2), vec![Step::AdoptUuid { uuid: uuid(A), from: B.into() }]);
        // Same UUID: wait for the sync.
        assert!(wait(&p));
    }

    #[test]
    fn a_replaced_node_rejoins_and_its_blank_brick_is_reset() {
        let v = vol(&[A, B, C], true, true);
        // C was replaced: new UUID, blank pool, blank disk.
        let mut o = answering(seen(C, &[], None, BrickDir::Blank), &[A, B], Some(v.clone()));
        o.my_uuid = "new".into();
        assert_eq!(plan(&want(C, &[A, B, C]), &o), vec![Step::AdoptUuid { uuid: uuid(C), from: A.into() }]);
        // After taking the UUID the pool synced the volume: the blank brick is reset.
        let o = seen(C, &[A, B], Some(v.clone()), BrickDir::Blank);
        let p = plan(&want(C, &[A, B, C]), &o);
        assert_eq!(p[0], Step::ResetBrick(format!("{C}:/data/b1/smb")));
        assert!(wait(&p), "C is not the coordinator: {p:?}");
        // A brick with foreign content is never reset.
        let o = seen(C, &[A, B], Some(v), BrickDir::Foreign);
        assert!(matches!(plan(&want(C, &[A, B, C]), &o)[..], [Step::Conflict(_)]));
    }

    #[test]
    fn an_added_replica_set_is_probed_then_appended() {
        let w = want(A, &[A, B, C, D, B, C]);
        let v = vol(&[A, B, C], true, true);
        let o = answering(seen(A, &[B, C], Some(v.clone()), BrickDir::Ours), &[B, C, D], None);
        let p = plan(&w, &o);
        assert_eq!(p[0], Step::Probe(D.into()));
        assert!(wait(&p), "{p:?}");
        let o = seen(A, &[B, C, D], Some(v), BrickDir::Ours);
        assert_eq!(plan(&w, &o), vec![Step::AddBricks(bricks(&[D, B, C]))]);
    }

    #[test]
    fn the_coordinator_is_the_first_connected_brick_host() {
        let v = vol(&[A, B, C], false, false);
        // A is gone: B coordinates, C waits.
        let mut o = seen(B, &[A, C], Some(v.clone()), BrickDir::Ours);
        o.peers[0].connected = false;
        let p = plan(&want(B, &[A, B, C]), &o);
        assert!(p.contains(&Step::Start), "{p:?}");
        let mut o = seen(C, &[A, B], Some(v), BrickDir::Ours);
        o.peers[0].connected = false;
        assert!(wait(&plan(&want(C, &[A, B, C]), &o)));
    }

    #[test]
    fn a_volume_unlike_the_file_is_a_conflict_never_a_change() {
        let w = want(A, &[A, B, C]);
        let conflict = |v: VolumeInfo| {
            let p = plan(&w, &seen(A, &[B, C], Some(v), BrickDir::Ours));
            assert!(matches!(p[..], [Step::Conflict(_)]), "{p:?}");
        };
        conflict(vol(&[A, B, D], true, true)); // another brick
        conflict(vol(&[A, B, C, D, B, C], true, true)); // more bricks than the file
        conflict(vol(&[B, A, C], true, true)); // another order
        let mut v = vol(&[A, B, C], true, true);
        v.replica_count = 2;
        conflict(v); // another layout
    }

    #[test]
    fn arbiter_sets_count_three_bricks() {
        let mut w = want(A, &[A, B, C]);
        w.replica = 2;
        w.arbiter = true;
        assert_eq!(w.set_size(), 3);
        let mut v = vol(&[A, B, C], true, true);
        v.arbiter_count = 1;
        assert_eq!(plan(&w, &seen(A, &[B, C], Some(v.clone()), BrickDir::Ours)), vec![Step::Done]);
        v.arbiter_count = 0;
        assert!(matches!(plan(&w, &seen(A, &[B, C], Some(v), BrickDir::Ours))[..], [Step::Conflict(_)]));
    }

    #[test]
    fn brick_parts() {
        assert_eq!(host_of("10.0.0.1:/data/b"), "10.0.0.1");
        assert_eq!(path_of("10.0.0.1:/data/b"), "/data/b");
        assert_eq!(want(A, &[A, B, C, A, B, C]).hosts(), vec![A, B, C]);
    }
}
