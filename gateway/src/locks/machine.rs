//! One node's part in the cluster-wide file-sharing state, as a pure state machine: inputs
//! (a client's request, a message from a peer, a link going up or down, what HA says, a tick)
//! in, outputs (a reply, a message to send, a lease break to deliver, a wake-up for waiters,
//! the node's license changing) out. No I/O, no clock: the caller passes `now`. The daemon drives
//! it in [`super::service`]; the test-only `sim` drives many on a simulated network.
//!
//! # Who decides
//! Every file has a **home**: the member of the current *view* that wins a rendezvous hash of the
//! file's identity. The home alone applies [`FileRecord`]'s rules to the file, so no two nodes can
//! grant conflicting state: there is one decider per file. Two refinements keep the common case
//! cheap:
//! - **Delegation.** When only one node's clients hold anything on a file, the home hands the
//!   whole record to that node (`Delegate`), which then decides alone, with no messages, until
//!   another node asks the home; the home then takes it back (`Recall`/`RecallAck`) before
//!   deciding anything. A file used through one node costs one round trip when first opened
//!   there and none after.
//! - **Replicas.** Every node whose clients hold something on a file keeps a copy of its record,
//!   updated by the home *before* the home answers the request that changed it (`Update`, acknowledged),
//!   so a READ or WRITE is checked against byte-range locks locally.
//!
//! # Views and recovery
//! The HA leader is also the leader here. Members ping it every heartbeat; it answers with the
//! current **view** (number and members: the nodes that pinged recently and whose mesh links to each
//! other are all up). On a new view every member freezes, reports what its own clients hold to each
//! file's new home (`Holdings`, then `HoldingsDone`), and a home decides nothing until it has every
//! member's report. A node's own holdings are the truth: a dead or excluded node's holdings are
//! simply not reported, so what it held is released. Requests in flight are sent again in the new view.
//!
//! # Fencing
//! A node may act only while **licensed**: HA sees a leader and quorum, it is a member of the
//! current view, and (followers) the leader confirmed that view in answer to a ping sent less than
//! `license` ago. The leader excludes a node only `license` after the last ping it received from
//! it (and a new leader starts `license` after taking over unless every node is in its first view),
//! so a node that is cut off has stopped before anyone reuses what it held.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::interest::{EventInterest, Level};
use super::record::{
    BreakNotice, CloseOutcome, FileName, FileRecord, Granted, Lease, OpenRecord, OpenRequest, OpenVerdict,
};
use super::types::{Conflict, LeaseId, OpenKey, Owner, RangeLock, ORPHAN};

/// A file's identity as the cluster state sees it: its bytes decide its home.
pub trait RecordKey: Clone + Eq + Hash + Ord + Debug {
    /// Bytes that identify it the same way on every node.
    fn key_bytes(&self) -> &[u8];
}

impl RecordKey for crate::vfs::FileId {
    fn key_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// An operation on one file's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Open (breaks leases, checks share modes and delete-pending).
    Open(OpenRequest),
    /// Close an open.
    Close(OpenKey),
    /// Take a byte-range lock (breaks other opens' read caching).
    Lock(RangeLock),
    /// Release one.
    Unlock {
        /// Owner.
        owner: Owner,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Release every lock of a POSIX owner on the file.
    UnlockAll(Owner),
    /// Mark or clear an open's delete-on-close.
    SetDeleteOnClose {
        /// The open.
        key: OpenKey,
        /// On or off.
        on: bool,
    },
    /// Set or clear the file's delete-pending state.
    SetDeletePending(bool),
    /// May `key` (or a client without an open) also have `access` (rename, delete, truncate)?
    /// With `handle_breaks`, other leases' handle caching is broken first and waited for.
    MayAlso {
        /// The open asking, if any.
        key: Option<OpenKey>,
        /// Access it needs.
        access: u32,
        /// Break other leases' H first (a rename or delete).
        handle_breaks: bool,
        /// The asker's own lease (not broken).
        lease: Option<LeaseId>,
    },
    /// A write, truncate or lock through `by`: break other read caching (no waiting, but for
    /// the acknowledgement of a [`SYNC_BREAKS`](super::record::SYNC_BREAKS) lease's break).
    Contend {
        /// The writer's lease.
        by: Option<LeaseId>,
    },
    /// A client acknowledged a lease or oplock break.
    AckBreak {
        /// Which lease.
        lease: LeaseId,
        /// State it kept.
        state: u8,
    },
    /// The whole record (for a node that holds nothing on the file).
    Read,
    /// Internal: a break was not acknowledged in time; take the lease down (MS-SMB2 3.3.6.5).
    ForceBreak(LeaseId),
    /// Make an open outlive its node for this many milliseconds (0: not at all).
    SetDurable {
        /// The open.
        key: OpenKey,
        /// Milliseconds.
        ms: u32,
    },
    /// Take over an orphaned durable open (or this node's own), as open `new`.
    Reclaim {
        /// Its key so far.
        old: OpenKey,
        /// Its key from now on.
        new: OpenKey,
    },
    /// The file was renamed on the volume (through any protocol, by a client with or without
    /// an open): every node holding it acts on the new name from the answer on.
    Renamed(Box<FileName>),
    /// Internal: orphan opens whose time ran out, and (with `posix`) the orphaned POSIX locks.
    Expire {
        /// The opens.
        opens: Vec<OpenKey>,
        /// Drop orphaned POSIX locks too.
        posix: bool,
    },
}

impl Op {
    /// Only the home may decide it (a delegate gives the record back first): it makes the
    /// record one that must not be delegated.
    fn needs_home(&self) -> bool {
        matches!(self, Op::SetDurable { .. } | Op::Reclaim { .. })
    }
}

/// A reclaimed durable open: what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenEntry {
    /// The open (access, share mode, lease key, flags, durability), under its new key.
    pub open: OpenRecord,
    /// Its lease, if any, now held through the reclaiming node.
    pub lease: Option<Lease>,
    /// Its byte-range locks.
    pub locks: Vec<RangeLock>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The open was granted, with this caching.
    Opened(Granted),
    /// The open was closed.
    Closed(CloseOutcome),
    /// Done.
    Done,
    /// The record.
    Record(FileRecord),
    /// A durable open was reclaimed.
    Reclaimed(OpenEntry),
}

/// An answer or why not.
pub type Outcome = Result<Answer, Conflict>;

/// A view: a numbered set of members the leader announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Increases with every view.
    pub number: u64,
    /// Who announced it.
    pub leader: u16,
    /// Its members, sorted.
    pub members: Vec<u16>,
    /// The [`View::id`] of the latest view the leader knew of when it made this one: only a node
    /// that was a member of exactly that view carries what its clients hold into this one (one
    /// that missed a view, or was in another leader's view of the same number, may hold what
    /// that view released).
    pub prev: u64,
}

impl View {
    /// Number and leader in one value: two leaders in turn may both make a view of the same
    /// number (one of them cut off), and messages must never mix them up.
    pub fn id(&self) -> u64 {
        (self.number << 16) | u64::from(self.leader)
    }
}

/// What nodes tell each other (over the authenticated mesh, in order per link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg<K> {
    /// Member -> leader, every heartbeat.
    Ping {
        /// The view the sender is in (0: none).
        view: u64,
        /// The sender's run.
        incarnation: u64,
        /// Peers it has live links to.
        links: Vec<u16>,
        /// A link of its view went down since the view began: messages may be lost.
        broken: bool,
        /// Echoed in the answer.
        seq: u64,
    },
    /// Leader -> member: the current view (answer to a ping, or unsolicited on a change).
    Pong {
        /// The view.
        view: View,
        /// The ping answered (0: unsolicited).
        seq: u64,
    },
    /// Member -> home: what the sender's clients hold on these files, and the orphans in the
    /// copies it keeps (with their record's version: the home keeps the lowest, the last state
    /// every copy had).
    Holdings {
        /// View.
        view: u64,
        /// Files and holdings.
        files: Vec<(K, FileRecord)>,
        /// Files, versions and orphans.
        orphans: Vec<(K, u64, FileRecord)>,
    },
    /// Any node -> every member: the grace for reclaiming POSIX locks ended; drop their orphans.
    EndGrace {
        /// View.
        view: u64,
    },
    /// Member -> every member: all its holdings were sent.
    HoldingsDone {
        /// View.
        view: u64,
    },
    /// Requester -> home.
    Req {
        /// View.
        view: u64,
        /// Requester's id for it.
        rid: u64,
        /// File.
        file: K,
        /// What to do.
        op: Op,
    },
    /// Home -> requester.
    Resp {
        /// View.
        view: u64,
        /// The request.
        rid: u64,
        /// The answer.
        outcome: Outcome,
        /// The record after it, with its version, for a requester that holds (or held)
        /// something on the file: its copy changes together with its answer.
        record: Option<(u64, FileRecord)>,
        /// A [`Msg::Delegate`] to the requester carried in the same frame (the first open of a
        /// file only its node uses: answer and hand-over in one message).
        then: Option<Box<Delegation<K>>>,
    },
    /// Home -> requester: you hold the file's record now (sent before you were told): decide it yourself.
    Redirect {
        /// View.
        view: u64,
        /// The request.
        rid: u64,
        /// File.
        file: K,
    },
    /// Home -> participant: the record changed.
    Update {
        /// View.
        view: u64,
        /// File.
        file: K,
        /// Version.
        version: u64,
        /// The record.
        record: FileRecord,
    },
    /// Participant -> home.
    UpdateAck {
        /// View.
        view: u64,
        /// File.
        file: K,
        /// Version.
        version: u64,
    },
    /// Home -> the only node holding anything: decide this file yourself.
    Delegate {
        /// View.
        view: u64,
        /// File.
        file: K,
        /// The record.
        record: FileRecord,
    },
    /// Home -> delegate: give the record back.
    Recall {
        /// View.
        view: u64,
        /// File.
        file: K,
    },
    /// Delegate -> home.
    RecallAck {
        /// View.
        view: u64,
        /// File.
        file: K,
        /// The record (empty if it was dropped).
        record: FileRecord,
    },
    /// Delegate -> home: an empty record it no longer keeps.
    Drop {
        /// View.
        view: u64,
        /// File.
        file: K,
    },
    /// Any node -> every member: an event for the protocols on other nodes (a directory
    /// change for CHANGE_NOTIFY watchers), opaque to the state machine.
    Event {
        /// View.
        view: u64,
        /// What happened, encoded by the protocol that sent it.
        payload: Vec<u8>,
    },
    /// Any node -> every other member: how much of the others' change events it wants
    /// (see [`super::interest`]); sent when that changes and in every new view.
    Interest {
        /// View.
        view: u64,
        /// The level.
        level: Level,
        /// Its number (acknowledged).
        seq: u64,
    },
    /// The answer to [`Msg::Interest`]: from now on the sender sends accordingly.
    InterestAck {
        /// View.
        view: u64,
        /// The number acknowledged.
        seq: u64,
    },
    /// Home -> lease holder's node: tell the client.
    Break {
        /// View.
        view: u64,
        /// File.
        file: K,
        /// The break.
        notice: BreakNotice,
    },
}

impl<K> Msg<K> {
    /// The view the message belongs to (pings and pongs carry their own).
    pub fn view(&self) -> Option<u64> {
        match self {
            Msg::Ping { .. } | Msg::Pong { .. } => None,
            Msg::Holdings { view, .. }
            | Msg::HoldingsDone { view }
            | Msg::Req { view, .. }
            | Msg::Resp { view, .. }
            | Msg::Redirect { view, .. }
            | Msg::Update { view, .. }
            | Msg::UpdateAck { view, .. }
            | Msg::Delegate { view, .. }
            | Msg::Recall { view, .. }
            | Msg::RecallAck { view, .. }
            | Msg::Drop { view, .. }
            | Msg::Event { view, .. }
            | Msg::EndGrace { view }
            | Msg::Interest { view, .. }
            | Msg::InterestAck { view, .. }
            | Msg::Break { view, .. } => Some(*view),
        }
    }
}

/// The content of a [`Msg::Delegate`] riding on a [`Msg::Resp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation<K> {
    /// File.
    pub file: K,
    /// The record.
    pub record: FileRecord,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<K> {
    /// A local client's request; answered by [`Output::Reply`] with the same `rid`.
    Request {
        /// Caller's id, unique among its outstanding requests.
        rid: u64,
        /// File.
        file: K,
        /// What to do.
        op: Op,
    },
    /// A message from a peer.
    Message {
        /// Sender.
        from: u16,
        /// Message.
        msg: Msg<K>,
    },
    /// Tell every other member about an event (best effort: lost with a view change).
    Broadcast(Vec<u8>),
    /// Tell the other members that want them (see [`super::interest`]) about a change event
    /// (best effort, as [`Input::Broadcast`]).
    Notify(Vec<u8>),
    /// How much of the other nodes' change events this node's watchers want now; `seq` grows
    /// with every change and comes back in [`Output::InterestAcked`].
    Interest {
        /// The level.
        level: Level,
        /// Its number.
        seq: u64,
    },
    /// The grace for reclaiming POSIX locks ended: drop their orphans everywhere.
    EndGrace,
    /// The mesh link to a peer is up.
    LinkUp(u16),
    /// The mesh link to a peer went down (messages on it may be lost).
    LinkDown(u16),
    /// What HA says now.
    Ha(HaInput),
    /// Time passed.
    Tick,
}

/// HA's verdict, fed every tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HaInput {
    /// The leader this node follows (itself when leading).
    pub leader: Option<u16>,
    /// This node sees quorum and a fresh leader: it may serve.
    pub ok: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<K> {
    /// Answer a local request.
    Reply {
        /// The request.
        rid: u64,
        /// The answer.
        outcome: Outcome,
    },
    /// Send to a peer.
    Send {
        /// Peer.
        to: u16,
        /// Message.
        msg: Msg<K>,
    },
    /// Tell the local client holding `notice.lease` about a break.
    Break {
        /// File.
        file: K,
        /// The break.
        notice: BreakNotice,
    },
    /// The file's state changed: local waiters (blocking locks) try again.
    Changed(K),
    /// The node became licensed (true) or lost its license (false: requests wait; see the
    /// module doc).
    Licensed(bool),
    /// A view without this node was adopted: what its clients held was released cluster-wide,
    /// so their handles must be invalidated (connections closed).
    Evicted,
    /// An event another node broadcast.
    Event(Vec<u8>),
    /// Every other member of the view knows this node's interest up to this number: the
    /// changes they make from now on reach it as it asked.
    InterestAcked(u64),
    /// The highest interest among the other members changed (publishers skip what nobody wants).
    RemoteInterest(Level),
}

/// Timing knobs.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// This node.
    pub me: u16,
    /// How many nodes the cluster has (`[cluster] nodes`).
    pub nodes: u16,
    /// This run's identity.
    pub incarnation: u64,
    /// How often a member pings the leader.
    pub heartbeat: Duration,
    /// A member not heard for this long is excluded from the next view.
    pub dead: Duration,
    /// How long a confirmed ping keeps a member licensed (HA's hold limit: shorter than `dead`).
    pub license: Duration,
    /// An unacknowledged break is forced after this.
    pub break_timeout: Duration,
    /// A local request unanswered for this long fails with [`Conflict::Unavailable`] (opens
    /// waiting for breaks get `break_timeout` more).
    pub request_timeout: Duration,
    /// Most empty delegated records a node keeps.
    pub max_idle_delegations: usize,
}

impl Config {
    /// A single node with no peers (the embedded default, a node without `[cluster]`).
    pub fn single() -> Config {
        Config {
            me: 0,
            nodes: 1,
            incarnation: 1,
            heartbeat: Duration::from_millis(100),
            dead: Duration::from_millis(1000),
            license: Duration::from_millis(800),
            break_timeout: Duration::from_secs(35),
            request_timeout: Duration::from_secs(10),
            max_idle_delegations: 65_536,
        }
    }
}

#[derive(Debug)]
enum HomeState {
    /// This node decides.
    Owned { record: FileRecord, version: u64 },
    /// The named node decides.
    Delegated(u16),
    /// Taking it back from the named node.
    Recalling(u16),
}

/// A request waiting its turn, or for breaks to end.
#[derive(Debug, Clone)]
struct Pending {
    from: u16,
    rid: u64,
    op: Op,
    first: bool,
}

/// An `Update` sent to participants whose acknowledgements the round waits for: only then is
/// the new record committed and the answers sent, so neither the home's own clients nor anyone
/// else acts on a decision some participant does not know yet (and a view change before then
/// leaves no trace of it: its requests are simply sent again).
#[derive(Debug)]
struct Push {
    waiting: BTreeSet<u16>,
    replies: Vec<Reply>,
    next: FileRecord,
    version: u64,
    /// Breaks for this node's own clients, delivered at commit.
    notices: Vec<BreakNotice>,
}

/// An answer to send: to whom, for which request, what, and the record for a participant.
type Reply = (u16, u64, Outcome, Option<(u64, FileRecord)>);

/// A file this node is the home of.
#[derive(Debug)]
struct HomeFile {
    state: HomeState,
    queue: VecDeque<Pending>,
    push: Option<Push>,
    /// Breaks awaiting acknowledgement, with when they started.
    timers: BTreeMap<LeaseId, Duration>,
    /// When this home first saw the record's orphans (their timeouts run from then).
    orphans_since: Option<Duration>,
}

impl HomeFile {
    fn new(state: HomeState) -> HomeFile {
        HomeFile { state, queue: VecDeque::new(), push: None, timers: BTreeMap::new(), orphans_since: None }
    }
}

/// A file another node is the home of.
#[derive(Debug)]
enum LocalFile {
    /// Delegated to this node: it decides.
    Delegated { record: FileRecord, timers: BTreeMap<LeaseId, Duration>, queue: VecDeque<Pending>, used: u64 },
    /// A copy kept because this node's clients hold something.
    Replica { record: FileRecord, version: u64 },
}

/// A local request not answered yet.
#[derive(Debug, Clone)]
struct Outstanding<K> {
    file: K,
    op: Op,
    deadline: Duration,
    /// Sent (or queued) in the current view.
    sent: bool,
    /// Nobody waits for the answer any more (the caller was told it timed out, or closed the
    /// open it asked for). A release is still carried out; a grant is undone on arrival.
    answered: bool,
}

impl Op {
    /// A release (close, unlock, acknowledgement): the client has given the state up whatever the
    /// answer, so it is carried out even after its caller stopped waiting; dropping it would
    /// leave the cluster keeping, for a handle nobody has any more, an open that refuses others.
    /// A rename is done on the volume whatever the answer: the record must learn it too.
    fn releases(&self) -> bool {
        matches!(self, Op::Close(_) | Op::Unlock { .. } | Op::UnlockAll(_) | Op::AckBreak { .. } | Op::Renamed(_))
    }

    /// What gives back what this request was granted, for a grant that arrives after its caller
    /// stopped waiting (its client never learns of it, so nobody else would ever release it).
    fn undo(&self, outcome: &Outcome) -> Option<Op> {
        match (self, outcome) {
            (Op::Open(req), Ok(Answer::Opened(_))) => Some(Op::Close(req.key)),
            (Op::Reclaim { new, .. }, Ok(Answer::Reclaimed(_))) => Some(Op::Close(*new)),
            (Op::Lock(l @ RangeLock { owner: Owner::Open(_), .. }), Ok(Answer::Done)) => {
                Some(Op::Unlock { owner: l.owner, offset: l.offset, len: l.len })
            }
            _ => None,
        }
    }

    /// Whether a grant of this could still come back after its caller stopped waiting.
    fn undoable(&self) -> bool {
        matches!(self, Op::Open(_) | Op::Reclaim { .. } | Op::Lock(RangeLock { owner: Owner::Open(_), .. }))
    }
}

/// Holdings arriving for a view being rebuilt.
#[derive(Debug)]
struct Collecting<K: Ord> {
    done: BTreeSet<u16>,
    records: BTreeMap<K, FileRecord>,
    /// Orphans by file, from the copy with the lowest version.
    orphans: BTreeMap<K, (u64, FileRecord)>,
}

impl<K: Ord> Default for Collecting<K> {
    fn default() -> Self {
        Collecting { done: BTreeSet::new(), records: BTreeMap::new(), orphans: BTreeMap::new() }
    }
}

impl<K: Ord> Collecting<K> {
    fn add_orphans(&mut self, file: K, version: u64, record: FileRecord) {
        match self.orphans.get(&file) {
            Some((v, _)) if *v <= version => {}
            _ => {
                self.orphans.insert(file, (version, record));
            }
        }
    }
}

/// What the leader knows of a member from its pings.
#[derive(Debug, Clone)]
struct PeerPing {
    at: Duration,
    incarnation: u64,
    view: u64,
    links: BTreeSet<u16>,
    broken: bool,
}

/// Leader-only state.
#[derive(Debug)]
struct Leading {
    since: Duration,
    pings: BTreeMap<u16, PeerPing>,
    /// When each member was last told it is in the view (its license runs from before that).
    confirmed: BTreeMap<u16, Duration>,
    /// Who should be in the view.
    desired: BTreeSet<u16>,
    /// The highest view id heard of.
    max_view: u64,
    issued: bool,
    /// The current view must be rebuilt (a member restarted, a link broke).
    rebuild: bool,
    /// Members that restarted: left out of the next view, so the others turn what their
    /// earlier run held durably into orphans before they come back.
    restarted: BTreeSet<u16>,
}

/// One node's file-sharing state machine.
#[derive(Debug)]
pub struct Machine<K: RecordKey> {
    cfg: Config,
    ha: HaInput,
    view: Option<View>,
    ready: bool,
    collecting: Option<Collecting<K>>,
    /// Messages of a view not adopted yet.
    future: Vec<(u16, Msg<K>)>,
    /// Requests for files this node is home of, while it cannot decide (rebuilding, no license).
    held: Vec<(u16, u64, K, Op)>,
    licensed_until: Option<Duration>,
    licensed: bool,
    ping_seq: u64,
    ping_sent: BTreeMap<u64, Duration>,
    last_ping: Option<Duration>,
    links: BTreeSet<u16>,
    broken: bool,
    leading: Option<Leading>,
    homes: HashMap<K, HomeFile>,
    local: HashMap<K, LocalFile>,
    /// Every file this node decides that has break timers or orphans running (and maybe some
    /// that no longer have: `periodic` drops those): the tick looks at these alone, not at
    /// every record kept, which grow with every file opened and would make an idle tick cost
    /// as much as the files ever used.
    timed: BTreeSet<K>,
    outstanding: HashMap<u64, Outstanding<K>>,
    /// Ids of the requests this machine makes itself (undoing late grants), above any caller's.
    internal_rid: u64,
    /// What this node reported of its clients' holdings for the view being built, for each file
    /// it has not yet heard of in this view: until the file's new home sends its record, this is
    /// the only copy (records were dropped at the view change). A further view change before
    /// then reports it again instead of losing it. (Orphans are not carried: other nodes keep
    /// copies of them, and a stale copy could bring back an expired one.)
    carried: HashMap<K, FileRecord>,
    clock: u64,
    /// POSIX locks outlive their node for this long (NLM's grace); zero: they die with it.
    posix_grace: Duration,
    /// Who wants this node's change events, and what it told them.
    interest: EventInterest,
}

fn fnv(bytes: &[u8], seed: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The home of `key` among `members` (rendezvous hashing: a membership change moves only the
/// files of the nodes that came or went).
pub fn home_of<K: RecordKey>(key: &K, members: &[u16]) -> Option<u16> {
    members.iter().copied().max_by_key(|m| (fnv(key.key_bytes(), *m), *m))
}

impl<K: RecordKey> Machine<K> {
    /// A node that is in no view yet.
    pub fn new(cfg: Config) -> Self {
        Machine {
            cfg,
            ha: HaInput::default(),
            view: None,
            ready: false,
            collecting: None,
            future: Vec::new(),
            held: Vec::new(),
            licensed_until: None,
            licensed: false,
            ping_seq: 0,
            ping_sent: BTreeMap::new(),
            last_ping: None,
            links: BTreeSet::new(),
            broken: false,
            leading: None,
            homes: HashMap::new(),
            local: HashMap::new(),
            timed: BTreeSet::new(),
            outstanding: HashMap::new(),
            internal_rid: 1 << 63,
            carried: HashMap::new(),
            clock: 0,
            posix_grace: Duration::ZERO,
            interest: EventInterest::default(),
        }
    }

    /// Panics unless every file with break timers or orphans running where this node decides is
    /// among those the tick looks at (the simulator checks it after every step).
    #[cfg(test)]
    pub(crate) fn check_timed(&self) {
        for (f, h) in &self.homes {
            let running = !h.timers.is_empty() || h.orphans_since.is_some();
            assert!(
                !running || self.timed.contains(f),
                "node {}: home of {f:?} has timers or orphans unwatched",
                self.cfg.me
            );
        }
        for (f, l) in &self.local {
            if let LocalFile::Delegated { timers, .. } = l {
                assert!(
                    timers.is_empty() || self.timed.contains(f),
                    "node {}: delegated {f:?} has timers unwatched",
                    self.cfg.me
                );
            }
        }
    }

    /// How many files the tick looks at (see `timed`).
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.timed.len()
    }

    /// How long POSIX-owner locks outlive their node, as orphans their owner may reclaim
    /// through any node (NLM's grace period); zero, the default, releases them with the node.
    /// Every node must be given the same value.
    pub fn set_posix_grace(&mut self, d: Duration) {
        self.posix_grace = d;
    }

    /// Sets the break timeout (simulator tests that must tell a break's timeout from its end).
    #[cfg(test)]
    pub(crate) fn set_break_timeout(&mut self, d: Duration) {
        self.cfg.break_timeout = d;
    }

    fn posix_durable(&self) -> bool {
        !self.posix_grace.is_zero()
    }

    /// The node keeping a second copy of `file`'s record when it must survive a node's death:
    /// the runner-up of the rendezvous hash.
    fn backup_of(&self, file: &K) -> Option<u16> {
        let v = self.view.as_ref()?;
        let home = home_of(file, &v.members)?;
        let rest: Vec<u16> = v.members.iter().copied().filter(|m| *m != home).collect();
        home_of(file, &rest)
    }

    /// This node's number.
    pub fn me(&self) -> u16 {
        self.cfg.me
    }

    /// The view this node is in.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Whether this node may act (see the module doc).
    pub fn is_licensed(&self) -> bool {
        self.licensed
    }

    /// Whether this node's share of the current view is rebuilt.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Local requests not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    fn view_id(&self) -> u64 {
        self.view.as_ref().map_or(0, View::id)
    }

    fn member(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.members.contains(&self.cfg.me))
    }

    fn license_now(&self, now: Duration) -> bool {
        if !self.ha.ok || !self.member() {
            return false;
        }
        if let Some(lead) = &self.leading {
            // Only a view made in this leadership: after a gap, another node may have led.
            return lead.issued && self.view.as_ref().is_some_and(|v| v.leader == self.cfg.me);
        }
        self.licensed_until.is_some_and(|u| now < u)
    }

    /// The record this node may read locally for `file`: it is the file's home, its delegate, or
    /// keeps a replica because its clients hold something. `None` while unlicensed, rebuilding, or
    /// if the node holds nothing on it (ask with [`Op::Read`]).
    pub fn local_record(&self, file: &K) -> Option<&FileRecord> {
        if !self.licensed || !self.ready {
            return None;
        }
        if let Some(h) = self.homes.get(file) {
            return match &h.state {
                HomeState::Owned { record, .. } if h.push.is_none() => Some(record),
                _ => None,
            };
        }
        match self.local.get(file)? {
            LocalFile::Delegated { record, .. } | LocalFile::Replica { record, .. } => Some(record),
        }
    }

    /// What this node's own clients hold, file by file: what the records say, less what they
    /// are giving up in requests not answered yet (a client that sent a close no longer uses the
    /// handle; a view change must not bring it back). What recovery reports, and what the
    /// simulator's invariant checks.
    pub fn holdings(&self) -> BTreeMap<K, FileRecord> {
        let mut held = self.recorded_holdings();
        for o in self.outstanding.values() {
            if let Some(r) = held.get_mut(&o.file) {
                match &o.op {
                    Op::Close(k) => {
                        r.close(*k);
                    }
                    Op::Unlock { owner, offset, len } => {
                        let _ = r.unlock(*owner, *offset, *len);
                    }
                    Op::UnlockAll(owner) => {
                        r.unlock_all(*owner);
                    }
                    Op::AckBreak { lease, state } => {
                        let _ = r.ack_break(lease, *state);
                    }
                    Op::Renamed(to) => r.renamed((**to).clone()),
                    _ => {}
                }
                if r.is_empty() {
                    held.remove(&o.file);
                }
            }
        }
        held
    }

    fn recorded_holdings(&self) -> BTreeMap<K, FileRecord> {
        let me = self.cfg.me;
        let mut held: BTreeMap<K, FileRecord> = BTreeMap::new();
        for (f, r) in &self.carried {
            if !r.is_empty() {
                held.insert(f.clone(), r.clone());
            }
        }
        for (f, h) in &self.homes {
            if let HomeState::Owned { record, .. } = &h.state {
                let mine = record.holdings_of(me);
                if !mine.is_empty() {
                    held.insert(f.clone(), mine);
                }
            }
        }
        for (f, l) in &self.local {
            let (LocalFile::Delegated { record, .. } | LocalFile::Replica { record, .. }) = l;
            let mine = record.holdings_of(me);
            if !mine.is_empty() {
                held.entry(f.clone()).or_default().merge(mine);
            }
        }
        held
    }

    /// The records this node decides as home (tests: the simulator's phantom-open check).
    #[cfg(test)]
    pub fn decided(&self) -> BTreeMap<K, FileRecord> {
        let mut found = BTreeMap::new();
        if self.licensed && self.ready {
            for (f, h) in &self.homes {
                if let HomeState::Owned { record, .. } = &h.state {
                    found.insert(f.clone(), record.clone());
                }
            }
        }
        found
    }

    #[doc(hidden)]
    pub fn dbg_file(&self, f: &K) -> (String, String) {
        (format!("{:?}", self.homes.get(f)), format!("{:?}", self.local.get(f)))
    }

    /// The orphans a view with only `members` keeps, from the copies of records this node has
    /// (as home or as a replica), with each copy's version.
    fn orphans(&self, members: &[u16]) -> Vec<(K, u64, FileRecord)> {
        let posix = self.posix_durable();
        let mut found = Vec::new();
        for (f, h) in &self.homes {
            if let HomeState::Owned { record, version } = &h.state {
                let o = record.orphans(members, posix);
                if !o.is_empty() {
                    found.push((f.clone(), *version, o));
                }
            }
        }
        for (f, l) in &self.local {
            if let LocalFile::Replica { record, version } = l {
                let o = record.orphans(members, posix);
                if !o.is_empty() {
                    found.push((f.clone(), *version, o));
                }
            }
        }
        found
    }

    /// The orphans of the records this node decides (tests: the simulator's invariant).
    pub fn orphans_here(&self) -> BTreeMap<K, FileRecord> {
        let (Some(v), true) = (&self.view, self.ready) else { return BTreeMap::new() };
        let mut found = BTreeMap::new();
        for (f, h) in &self.homes {
            if let HomeState::Owned { record, .. } = &h.state {
                let o = record.orphans(&v.members, false);
                if !o.is_empty() {
                    found.insert(f.clone(), o);
                }
            }
        }
        found
    }

    /// Drops the orphaned POSIX locks of the files this node is home of.
    fn end_grace(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        let files: Vec<K> = self
            .homes
            .iter()
            .filter(|(_, h)| matches!(&h.state, HomeState::Owned { record, .. } if record.has_posix_orphans()))
            .map(|(f, _)| f.clone())
            .collect();
        for f in files {
            let p = Pending { from: u16::MAX, rid: 0, op: Op::Expire { opens: Vec::new(), posix: true }, first: true };
            self.enqueue_local(now, &f, p, out);
        }
    }

    /// Records this node decides as home, and records it keeps (delegated or replicas).
    pub fn record_count(&self) -> (usize, usize) {
        (self.homes.len(), self.local.len())
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, now: Duration, input: Input<K>) -> Vec<Output<K>> {
        let mut out = Vec::new();
        let periodic = matches!(input, Input::Tick);
        match input {
            Input::Request { rid, file, op } => self.request(now, rid, file, op, &mut out),
            Input::Message { from, msg } => self.message(now, from, msg, &mut out),
            Input::Broadcast(payload) => {
                if let Some(v) = &self.view {
                    for m in v.members.iter().filter(|m| **m != self.cfg.me) {
                        out.push(Output::Send { to: *m, msg: Msg::Event { view: v.id(), payload: payload.clone() } });
                    }
                }
            }
            Input::Notify(payload) => {
                if let Some(v) = &self.view {
                    for m in v.members.iter().filter(|m| **m != self.cfg.me && self.interest.wants(**m)) {
                        out.push(Output::Send { to: *m, msg: Msg::Event { view: v.id(), payload: payload.clone() } });
                    }
                }
            }
            Input::Interest { level, seq } => {
                let e = self.interest.set_mine(level, seq, &self.others());
                self.interest_effects(e, &mut out);
            }
            Input::EndGrace => {
                if let Some(v) = &self.view {
                    for m in v.members.iter().filter(|m| **m != self.cfg.me) {
                        out.push(Output::Send { to: *m, msg: Msg::EndGrace { view: v.id() } });
                    }
                }
                self.end_grace(now, &mut out);
            }
            Input::LinkUp(p) => {
                self.links.insert(p);
            }
            Input::LinkDown(p) => {
                self.links.remove(&p);
                if self.view.as_ref().is_some_and(|v| v.members.contains(&p)) {
                    self.broken = true;
                }
            }
            Input::Ha(h) => {
                if h.leader != self.ha.leader || !h.ok {
                    // Leadership ends with quorum: a later one starts afresh (new view number,
                    // the wait for licenses another leader may have given).
                    self.leading = None;
                }
                self.ha = h;
                if h.ok && h.leader == Some(self.cfg.me) && self.leading.is_none() {
                    self.leading = Some(Leading {
                        since: now,
                        pings: BTreeMap::new(),
                        confirmed: BTreeMap::new(),
                        desired: BTreeSet::new(),
                        max_view: self.view_id(),
                        issued: false,
                        rebuild: false,
                        restarted: BTreeSet::new(),
                    });
                }
            }
            Input::Tick => {}
        }
        if periodic {
            self.periodic(now, &mut out);
        }
        self.check_license(now, &mut out);
        out
    }

    fn check_license(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        let lic = self.license_now(now);
        if lic != self.licensed {
            self.licensed = lic;
            out.push(Output::Licensed(lic));
            if lic {
                self.replay_held(now, out);
                self.resend(now, out);
            }
        }
    }

    // ---------------------------------------------------------------- membership

    fn periodic(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        if self.leading.is_some() {
            self.lead(now, out);
        } else if let Some(l) = self.ha.leader {
            if self.last_ping.is_none_or(|t| now.saturating_sub(t) >= self.cfg.heartbeat) {
                self.last_ping = Some(now);
                self.ping_seq += 1;
                self.ping_sent.insert(self.ping_seq, now);
                while self.ping_sent.len() > 64 {
                    self.ping_sent.pop_first();
                }
                let msg = Msg::Ping {
                    view: self.view_id(),
                    incarnation: self.cfg.incarnation,
                    links: self.links.iter().copied().collect(),
                    broken: self.broken,
                    seq: self.ping_seq,
                };
                out.push(Output::Send { to: l, msg });
            }
        }
        // Breaks not acknowledged in time, where this node decides.
        let timeout = self.cfg.break_timeout;
        let late = |timers: &BTreeMap<LeaseId, Duration>| -> Vec<LeaseId> {
            timers.iter().filter(|(_, t)| now.saturating_sub(**t) >= timeout).map(|(l, _)| *l).collect()
        };
        let mut expired: Vec<(K, LeaseId)> = Vec::new();
        if self.licensed && self.ready {
            let (homes, local) = (&self.homes, &self.local);
            self.timed.retain(|f| {
                let home = homes.get(f).filter(|h| !h.timers.is_empty() || h.orphans_since.is_some());
                let delegated = match local.get(f) {
                    Some(LocalFile::Delegated { timers, .. }) if !timers.is_empty() => Some(timers),
                    _ => None,
                };
                home.is_some() || delegated.is_some()
            });
            for f in &self.timed {
                if let Some(h) = self.homes.get(f) {
                    expired.extend(late(&h.timers).into_iter().map(|l| (f.clone(), l)));
                }
                if let Some(LocalFile::Delegated { timers, .. }) = self.local.get(f) {
                    expired.extend(late(timers).into_iter().map(|l| (f.clone(), l)));
                }
            }
        }
        for (f, lease) in expired {
            self.enqueue_local(
                now,
                &f,
                Pending { from: u16::MAX, rid: 0, op: Op::ForceBreak(lease), first: true },
                out,
            );
        }
        // Orphans whose time ran out.
        let mut ended: Vec<(K, Vec<OpenKey>, bool)> = Vec::new();
        if self.licensed && self.ready {
            for (f, h) in self.timed.iter().filter_map(|f| Some((f, self.homes.get(f)?))) {
                let (Some(since), HomeState::Owned { record, .. }) = (h.orphans_since, &h.state) else { continue };
                if h.queue.iter().any(|p| matches!(p.op, Op::Expire { .. })) {
                    continue;
                }
                let age = now.saturating_sub(since);
                let opens: Vec<OpenKey> = record
                    .opens
                    .iter()
                    .filter(|o| o.orphan && age >= Duration::from_millis(u64::from(o.durable_ms)))
                    .map(|o| o.key)
                    .collect();
                let posix = record.has_posix_orphans() && age >= self.posix_grace;
                if !opens.is_empty() || posix {
                    ended.push((f.clone(), opens, posix));
                }
            }
        }
        for (f, opens, posix) in ended {
            let p = Pending { from: u16::MAX, rid: 0, op: Op::Expire { opens, posix }, first: true };
            self.enqueue_local(now, &f, p, out);
        }
        // Local requests that waited too long.
        let late: Vec<u64> = self.outstanding.iter().filter(|(_, o)| now >= o.deadline).map(|(r, _)| *r).collect();
        for rid in late {
            self.give_up(rid, out);
        }
        self.send_internal(now, out);
        self.evict_idle(out);
    }

    fn lead(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        let me = self.cfg.me;
        let cur = self.view.clone().filter(|v| v.leader == me);
        let my_links = self.links.clone();
        let Some(lead) = self.leading.as_mut() else { return };
        lead.pings.retain(|_, p| now.saturating_sub(p.at) < self.cfg.dead);
        let mut alive: BTreeSet<u16> = lead.pings.keys().copied().collect();
        alive.insert(me);
        if cur.is_some() {
            for r in &lead.restarted {
                alive.remove(r);
            }
        }
        // Members must all be linked to each other: drop the higher-numbered end of a missing link.
        let links_of = |n: u16| -> BTreeSet<u16> {
            if n == me {
                my_links.clone()
            } else {
                lead.pings.get(&n).map(|p| p.links.clone()).unwrap_or_default()
            }
        };
        loop {
            let nodes: Vec<u16> = alive.iter().copied().collect();
            let mut cut = None;
            'pairs: for (i, a) in nodes.iter().enumerate() {
                for b in &nodes[i + 1..] {
                    if !links_of(*a).contains(b) || !links_of(*b).contains(a) {
                        cut = Some(if *b == me { *a } else { *b });
                        break 'pairs;
                    }
                }
            }
            match cut {
                Some(n) => {
                    alive.remove(&n);
                }
                None => break,
            }
        }
        lead.desired = alive.clone();
        let members: Vec<u16> = alive.into_iter().collect();
        if let Some(v) = &cur {
            if lead.pings.iter().any(|(n, p)| v.members.contains(n) && p.view == v.id() && p.broken) {
                lead.rebuild = true;
            }
        }
        if self.broken && cur.is_some() {
            lead.rebuild = true;
        }
        // A new leadership always issues its own view (its license rests on one), even over the
        // same members as the view it issued in an earlier leadership.
        let changed = !lead.issued || cur.as_ref().is_none_or(|v| v.members != members) || lead.rebuild;
        if !changed {
            return;
        }
        // A new leader cannot know who the previous one licensed: unless everyone is in, it
        // waits a full license before its first view.
        if !lead.issued
            && members.len() < usize::from(self.cfg.nodes)
            && now.saturating_sub(lead.since) < self.cfg.license
        {
            return;
        }
        // A member leaves only once its license has surely run out: it was last confirmed at
        // `confirmed`, and it pinged before that.
        if let Some(v) = &cur {
            for gone in v.members.iter().filter(|n| !members.contains(n)) {
                if lead.confirmed.get(gone).is_some_and(|t| now.saturating_sub(*t) < self.cfg.license) {
                    return;
                }
            }
        }
        let prev = lead.max_view.max(self.view.as_ref().map_or(0, View::id));
        let number = (prev >> 16) + 1;
        lead.issued = true;
        lead.rebuild = false;
        let view = View { number, leader: me, members, prev };
        lead.max_view = view.id();
        // A restarted node left out once may come back in the next view.
        lead.restarted.retain(|r| view.members.contains(r));
        for m in view.members.iter().filter(|m| **m != me) {
            lead.confirmed.insert(*m, now);
            out.push(Output::Send { to: *m, msg: Msg::Pong { view: view.clone(), seq: 0 } });
        }
        self.accept_view(now, view, out);
    }

    fn accept_view(&mut self, now: Duration, view: View, out: &mut Vec<Output<K>>) {
        let me = self.cfg.me;
        let continuous = self.member() && self.view_id() == view.prev;
        let mut held = self.holdings();
        let orphans = if continuous { self.orphans(&view.members) } else { Vec::new() };
        if !continuous && !held.is_empty() {
            // This node missed a view: what its clients hold may have been released and given
            // to others meanwhile.
            held.clear();
            out.push(Output::Evicted);
        }
        self.carried = held.iter().map(|(f, r)| (f.clone(), r.clone())).collect();
        self.homes.clear();
        self.local.clear();
        self.held.clear();
        for o in self.outstanding.values_mut() {
            o.sent = false;
        }
        let was_member = self.member();
        self.view = Some(view.clone());
        self.ready = false;
        self.broken = false;
        let e =
            if view.members.contains(&me) { self.interest.new_view(&self.others()) } else { self.interest.no_view() };
        self.interest_effects(e, out);
        if !view.members.contains(&me) {
            self.collecting = None;
            self.carried.clear();
            if was_member && !held.is_empty() {
                out.push(Output::Evicted);
            }
            self.check_license(now, out);
            return;
        }
        self.collecting = Some(Collecting::default());
        let mut by_home: BTreeMap<u16, Vec<(K, FileRecord)>> = BTreeMap::new();
        for (f, r) in held {
            if let Some(h) = home_of(&f, &view.members) {
                by_home.entry(h).or_default().push((f, r));
            }
        }
        let mut orphans_by_home: BTreeMap<u16, Vec<(K, u64, FileRecord)>> = BTreeMap::new();
        for (f, v, r) in orphans {
            if let Some(h) = home_of(&f, &view.members) {
                orphans_by_home.entry(h).or_default().push((f, v, r));
            }
        }
        for m in &view.members {
            let files = by_home.remove(m).unwrap_or_default();
            let orphans = orphans_by_home.remove(m).unwrap_or_default();
            if *m == me {
                let c = self.collecting.as_mut().expect("just set");
                for (f, r) in files {
                    c.records.entry(f).or_default().merge(r);
                }
                for (f, v, r) in orphans {
                    c.add_orphans(f, v, r);
                }
                c.done.insert(me);
            } else {
                for chunk in files.chunks(256) {
                    out.push(Output::Send {
                        to: *m,
                        msg: Msg::Holdings { view: view.id(), files: chunk.to_vec(), orphans: Vec::new() },
                    });
                }
                for chunk in orphans.chunks(256) {
                    out.push(Output::Send {
                        to: *m,
                        msg: Msg::Holdings { view: view.id(), files: Vec::new(), orphans: chunk.to_vec() },
                    });
                }
                out.push(Output::Send { to: *m, msg: Msg::HoldingsDone { view: view.id() } });
            }
        }
        self.check_license(now, out);
        // Messages of this view that came early.
        for (from, msg) in std::mem::take(&mut self.future) {
            self.message(now, from, msg, out);
        }
        self.maybe_ready(now, out);
    }

    fn maybe_ready(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        let (Some(v), Some(c)) = (&self.view, &self.collecting) else { return };
        if !v.members.iter().all(|m| c.done.contains(m)) {
            return;
        }
        let mut c = self.collecting.take().expect("checked");
        let me = self.cfg.me;
        let view = v.id();
        for (f, (_, orphans)) in std::mem::take(&mut c.orphans) {
            c.records.entry(f).or_default().merge(orphans);
        }
        for (f, record) in c.records {
            let timers = record.breaking().map(|l| (l.id, now)).collect();
            let orphans_since = record.has_orphans().then_some(now);
            let backup = self.backup_of(&f).filter(|_| record.needs_backup(!self.posix_grace.is_zero()));
            let copies: BTreeSet<u16> = record.nodes().into_iter().chain(backup).filter(|n| *n != me).collect();
            for n in copies {
                out.push(Output::Send {
                    to: n,
                    msg: Msg::Update { view, file: f.clone(), version: 1, record: record.clone() },
                });
            }
            out.push(Output::Changed(f.clone()));
            let mut h = HomeFile::new(HomeState::Owned { record, version: 1 });
            h.timers = timers;
            h.orphans_since = orphans_since;
            if !h.timers.is_empty() || h.orphans_since.is_some() {
                self.timed.insert(f.clone());
            }
            self.carried.remove(&f);
            self.homes.insert(f, h);
        }
        self.ready = true;
        self.replay_held(now, out);
        self.resend(now, out);
    }

    /// Sends again (or runs here) every local request not yet sent in this view.
    fn resend(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        self.send_unsent(now, out, |_| true);
    }

    /// Sends (or runs here) the requests not yet sent in this view whose id `pick` accepts, in
    /// the order they were made.
    fn send_unsent(&mut self, now: Duration, out: &mut Vec<Output<K>>, pick: impl Fn(u64) -> bool) {
        if !self.licensed || self.view.is_none() {
            return;
        }
        let mut rids: Vec<u64> =
            self.outstanding.iter().filter(|(r, o)| pick(**r) && !o.sent).map(|(r, _)| *r).collect();
        rids.sort_unstable();
        for rid in rids {
            if let Some(o) = self.outstanding.get(&rid).cloned() {
                self.route(now, rid, o.file, o.op, out);
            }
        }
    }

    fn replay_held(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        if !self.licensed || !self.ready {
            return;
        }
        for (from, rid, file, op) in std::mem::take(&mut self.held) {
            self.home_request(now, from, rid, file, op, out);
        }
    }

    // ---------------------------------------------------------------- requests

    /// Tells the caller of `rid` it is unavailable. A release or a possible grant stays
    /// outstanding, answered: it is still carried out, or undone when it arrives.
    fn give_up(&mut self, rid: u64, out: &mut Vec<Output<K>>) {
        match self.outstanding.get_mut(&rid) {
            Some(o) if o.answered => return,
            Some(o) if o.op.releases() || o.op.undoable() => {
                o.answered = true;
                o.deadline = Duration::MAX;
            }
            Some(_) => {
                self.outstanding.remove(&rid);
            }
            None => return,
        }
        out.push(Output::Reply { rid, outcome: Err(Conflict::Unavailable) });
    }

    /// The answer to local request `rid` arrived: to its caller, or, if nobody waits any more,
    /// the grant is given back.
    /// (The undo is sent at the next tick, not from inside the round that answered.)
    fn answered(&mut self, rid: u64, outcome: Outcome, out: &mut Vec<Output<K>>) {
        let Some(o) = self.outstanding.remove(&rid) else { return };
        if !o.answered {
            out.push(Output::Reply { rid, outcome });
        } else if let Some(undo) = o.op.undo(&outcome) {
            self.internal_rid += 1;
            let o = Outstanding { file: o.file, op: undo, deadline: Duration::MAX, sent: false, answered: true };
            self.outstanding.insert(self.internal_rid, o);
        }
    }

    /// Sends this machine's own requests (undos) not sent in this view yet.
    fn send_internal(&mut self, now: Duration, out: &mut Vec<Output<K>>) {
        self.send_unsent(now, out, |r| r > 1 << 63);
    }

    fn request(&mut self, now: Duration, rid: u64, file: K, op: Op, out: &mut Vec<Output<K>>) {
        if let Op::Close(key) = &op {
            // Closing an open still being asked for (its caller went away): the open, if
            // granted, is given back when its answer comes.
            let asking: Vec<u64> = self
                .outstanding
                .iter()
                .filter(|(_, o)| !o.answered && matches!(&o.op, Op::Open(r) if r.key == *key))
                .map(|(r, _)| *r)
                .collect();
            for r in asking {
                self.give_up(r, out);
            }
        }
        let waits_for_breaks = matches!(op, Op::Open(_) | Op::MayAlso { handle_breaks: true, .. });
        let wait = self.cfg.request_timeout + if waits_for_breaks { self.cfg.break_timeout } else { Duration::ZERO };
        self.outstanding.insert(
            rid,
            Outstanding { file: file.clone(), op: op.clone(), deadline: now + wait, sent: false, answered: false },
        );
        if self.licensed && self.view.is_some() {
            self.route(now, rid, file, op, out);
        }
    }

    fn route(&mut self, now: Duration, rid: u64, file: K, op: Op, out: &mut Vec<Output<K>>) {
        let me = self.cfg.me;
        let Some(view) = self.view.as_ref() else { return };
        let Some(home) = home_of(&file, &view.members) else { return };
        let number = view.id();
        if let Some(o) = self.outstanding.get_mut(&rid) {
            o.sent = true;
        }
        if home == me {
            self.home_request(now, me, rid, file, op, out);
        } else if matches!(self.local.get(&file), Some(LocalFile::Delegated { .. })) && !op.needs_home() {
            self.enqueue_local(now, &file, Pending { from: me, rid, op, first: true }, out);
        } else {
            out.push(Output::Send { to: home, msg: Msg::Req { view: number, rid, file, op } });
        }
    }

    fn reply(
        &mut self,
        to: u16,
        rid: u64,
        outcome: Outcome,
        record: Option<(u64, FileRecord)>,
        out: &mut Vec<Output<K>>,
    ) {
        if to == u16::MAX {
            return;
        }
        if to == self.cfg.me {
            self.answered(rid, outcome, out);
        } else {
            out.push(Output::Send { to, msg: Msg::Resp { view: self.view_id(), rid, outcome, record, then: None } });
        }
    }

    // ---------------------------------------------------------------- messages

    fn message(&mut self, now: Duration, from: u16, msg: Msg<K>, out: &mut Vec<Output<K>>) {
        let cur = self.view_id();
        match msg.view() {
            Some(v) if v != cur => {
                // A later view (or another leader's of the same number) not adopted yet: keep it
                // until it is; an earlier one is over.
                if v >> 16 >= cur >> 16 && self.future.len() < 1_000_000 {
                    self.future.push((from, msg));
                }
                return;
            }
            _ => {}
        }
        match msg {
            Msg::Ping { view, incarnation, links, broken, seq } => {
                self.ping(now, from, view, incarnation, links, broken, seq, out)
            }
            Msg::Pong { view, seq } => {
                if self.ha.leader != Some(view.leader) || self.leading.is_some() {
                    return;
                }
                let newer = self.view.as_ref().is_none_or(|v| view.number >= v.number && view.id() != v.id());
                let same = self.view.as_ref().is_some_and(|v| v.id() == view.id());
                if let Some(sent) = self.ping_sent.get(&seq).copied().filter(|_| seq != 0) {
                    if view.members.contains(&self.cfg.me) && (newer || same) {
                        let until = sent + self.cfg.license;
                        self.licensed_until = Some(self.licensed_until.map_or(until, |u| u.max(until)));
                    }
                }
                if newer {
                    self.accept_view(now, view, out);
                }
            }
            Msg::Holdings { files, orphans, .. } => {
                if let Some(c) = self.collecting.as_mut() {
                    for (f, r) in files {
                        c.records.entry(f).or_default().merge(r);
                    }
                    for (f, v, r) in orphans {
                        c.add_orphans(f, v, r);
                    }
                }
            }
            Msg::EndGrace { .. } => self.end_grace(now, out),
            Msg::HoldingsDone { .. } => {
                if let Some(c) = self.collecting.as_mut() {
                    c.done.insert(from);
                }
                self.maybe_ready(now, out);
            }
            Msg::Req { rid, file, op, .. } => self.home_request(now, from, rid, file, op, out),
            Msg::Resp { view, rid, outcome, record, then } => {
                if let Some((file, (version, record))) = self.outstanding.get(&rid).map(|o| o.file.clone()).zip(record)
                {
                    self.set_replica(file, version, record);
                }
                self.answered(rid, outcome, out);
                if let Some(d) = then {
                    let Delegation { file, record } = *d;
                    self.message(now, from, Msg::Delegate { view, file, record }, out);
                }
            }
            Msg::Redirect { rid, file, .. } => {
                let Some(o) = self.outstanding.get(&rid).cloned() else { return };
                if matches!(self.local.get(&file), Some(LocalFile::Delegated { .. })) && !o.op.needs_home() {
                    self.enqueue_local(now, &file, Pending { from: self.cfg.me, rid, op: o.op, first: true }, out);
                } else {
                    // Recalled meanwhile: the home decides after all.
                    self.route(now, rid, file, o.op, out);
                }
            }
            Msg::Update { view, file, version, record } => {
                self.set_replica(file.clone(), version, record);
                out.push(Output::Send { to: from, msg: Msg::UpdateAck { view, file: file.clone(), version } });
                out.push(Output::Changed(file));
            }
            Msg::UpdateAck { file, .. } => {
                let Some(h) = self.homes.get_mut(&file) else { return };
                let Some(p) = h.push.as_mut() else { return };
                p.waiting.remove(&from);
                if p.waiting.is_empty() {
                    let push = h.push.take().expect("checked");
                    self.commit(&file, push.next, push.version, push.replies, push.notices, true, out);
                    self.run_home(now, &file, out);
                }
            }
            Msg::Delegate { file, record, .. } => {
                self.carried.remove(&file);
                self.clock += 1;
                let timers: BTreeMap<LeaseId, Duration> = record.breaking().map(|l| (l.id, now)).collect();
                if !timers.is_empty() {
                    self.timed.insert(file.clone());
                }
                self.local.insert(
                    file.clone(),
                    LocalFile::Delegated { record, timers, queue: VecDeque::new(), used: self.clock },
                );
                out.push(Output::Changed(file));
            }
            Msg::Recall { view, file } => {
                let me = self.cfg.me;
                let (record, queue) = match self.local.remove(&file) {
                    Some(LocalFile::Delegated { record, queue, .. }) => (record, queue),
                    Some(LocalFile::Replica { record, .. }) => (record, VecDeque::new()),
                    None => (FileRecord::default(), VecDeque::new()),
                };
                if record.nodes().contains(&me) {
                    self.local.insert(file.clone(), LocalFile::Replica { record: record.clone(), version: 0 });
                }
                out.push(Output::Send { to: from, msg: Msg::RecallAck { view, file: file.clone(), record } });
                // Requests it had waiting go to the home, after the record.
                for p in queue.into_iter().filter(|p| p.from == me) {
                    if let Some(o) = self.outstanding.get(&p.rid).cloned() {
                        self.route(now, p.rid, o.file, o.op, out);
                    }
                }
            }
            Msg::RecallAck { file, record, .. } => {
                let Some(h) = self.homes.get_mut(&file) else { return };
                if matches!(h.state, HomeState::Recalling(n) if n == from) {
                    h.timers = record.breaking().map(|l| (l.id, now)).collect();
                    h.orphans_since = record.has_orphans().then_some(now);
                    if !h.timers.is_empty() || h.orphans_since.is_some() {
                        self.timed.insert(file.clone());
                    }
                    h.state = HomeState::Owned { record, version: 1 };
                    self.run_home(now, &file, out);
                }
            }
            Msg::Drop { file, .. } => {
                let Some(h) = self.homes.get_mut(&file) else { return };
                if matches!(h.state, HomeState::Delegated(n) if n == from) {
                    self.homes.remove(&file);
                }
            }
            Msg::Break { file, notice, .. } => out.push(Output::Break { file, notice }),
            Msg::Event { payload, .. } => out.push(Output::Event(payload)),
            Msg::Interest { view, level, seq } => {
                let e = self.interest.told(from, level, &self.others());
                self.interest_effects(e, out);
                out.push(Output::Send { to: from, msg: Msg::InterestAck { view, seq } });
            }
            Msg::InterestAck { seq, .. } => {
                let e = self.interest.ack(from, seq, &self.others());
                self.interest_effects(e, out);
            }
        }
    }

    /// The other members of the current view (none when this node is not a member).
    fn others(&self) -> Vec<u16> {
        match &self.view {
            Some(v) if v.members.contains(&self.cfg.me) => {
                v.members.iter().copied().filter(|m| *m != self.cfg.me).collect()
            }
            _ => Vec::new(),
        }
    }

    fn interest_effects(&self, e: super::interest::Effects, out: &mut Vec<Output<K>>) {
        let (level, seq) = self.interest.mine();
        let view = self.view_id();
        for to in e.tell {
            out.push(Output::Send { to, msg: Msg::Interest { view, level, seq } });
        }
        if let Some(s) = e.acked {
            out.push(Output::InterestAcked(s));
        }
        if let Some(l) = e.remote {
            out.push(Output::RemoteInterest(l));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ping(
        &mut self,
        now: Duration,
        from: u16,
        view: u64,
        incarnation: u64,
        links: Vec<u16>,
        broken: bool,
        seq: u64,
        out: &mut Vec<Output<K>>,
    ) {
        let me = self.cfg.me;
        let cur = self.view.clone().filter(|v| v.leader == me);
        let Some(lead) = self.leading.as_mut() else { return };
        let restarted = lead.pings.get(&from).is_some_and(|p| p.incarnation != incarnation);
        lead.max_view = lead.max_view.max(view);
        lead.pings.insert(from, PeerPing { at: now, incarnation, view, links: links.into_iter().collect(), broken });
        let Some(v) = cur else { return };
        if !lead.issued {
            // A view of an earlier leadership of this node: not confirmed by this one.
            return;
        }
        if lead.restarted.contains(&from) {
            // Not in a view again until one without it has turned its earlier run's durable
            // holdings into orphans (else its new run would take them for its own).
            return;
        }
        if v.members.contains(&from) {
            if restarted {
                // Its earlier run's holdings died with it: rebuild without it at once (and
                // only then with it, so that what it held durably becomes orphans first).
                lead.rebuild = true;
                lead.restarted.insert(from);
                return;
            }
            // Confirm membership only to nodes meant to stay: one about to be excluded must let
            // its license run out.
            if !lead.desired.is_empty() && !lead.desired.contains(&from) {
                return;
            }
            lead.confirmed.insert(from, now);
        }
        out.push(Output::Send { to: from, msg: Msg::Pong { view: v, seq } });
    }

    /// Keeps (or, when this node holds nothing on it any more, drops) a copy of `file`'s record.
    fn set_replica(&mut self, file: K, version: u64, record: FileRecord) {
        self.carried.remove(&file);
        let newer = match self.local.get(&file) {
            Some(LocalFile::Replica { version: v, .. }) => *v < version,
            Some(LocalFile::Delegated { .. }) => false,
            None => true,
        };
        if !newer {
            return;
        }
        let me = self.cfg.me;
        let backup = record.needs_backup(self.posix_durable()) && self.backup_of(&file) == Some(me);
        if record.nodes().contains(&me) || backup {
            self.local.insert(file, LocalFile::Replica { record, version });
        } else {
            self.local.remove(&file);
        }
    }

    // ---------------------------------------------------------------- deciding

    fn home_request(&mut self, now: Duration, from: u16, rid: u64, file: K, op: Op, out: &mut Vec<Output<K>>) {
        let me = self.cfg.me;
        if !self.ready || !self.licensed {
            // Cannot decide yet: keep it until this node can (a view change drops it; its
            // requester then sends it again).
            if from == me {
                if let Some(o) = self.outstanding.get_mut(&rid) {
                    o.sent = false;
                }
            } else if self.held.len() < 1_000_000 {
                self.held.push((from, rid, file, op));
            }
            return;
        }
        let view = self.view_id();
        let h = self
            .homes
            .entry(file.clone())
            .or_insert_with(|| HomeFile::new(HomeState::Owned { record: FileRecord::default(), version: 0 }));
        match h.state {
            HomeState::Delegated(n) if n == from && !op.needs_home() => {
                out.push(Output::Send { to: from, msg: Msg::Redirect { view, rid, file } });
                return;
            }
            HomeState::Delegated(n) => {
                h.state = HomeState::Recalling(n);
                out.push(Output::Send { to: n, msg: Msg::Recall { view, file: file.clone() } });
            }
            _ => {}
        }
        h.queue.push_back(Pending { from, rid, op, first: true });
        self.run_home(now, &file, out);
    }

    /// Queues `p` where this node decides `file` (its home or its delegate) and runs it.
    fn enqueue_local(&mut self, now: Duration, file: &K, p: Pending, out: &mut Vec<Output<K>>) {
        if let Some(h) = self.homes.get_mut(file) {
            h.queue.push_back(p);
            self.run_home(now, file, out);
        } else if let Some(LocalFile::Delegated { queue, .. }) = self.local.get_mut(file) {
            queue.push_back(p);
            self.run_delegated(now, file, out);
        }
    }

    /// Runs the queued requests of a file this node is home of, as far as they go. The round
    /// decides on a copy of the record; a request that changed it is answered only once every
    /// other node holding something on the file has the new record (its `UpdateAck`), so no node
    /// acts on an older one; a requester gets the record with its answer. One such request per
    /// round.
    fn run_home(&mut self, now: Duration, file: &K, out: &mut Vec<Output<K>>) {
        let me = self.cfg.me;
        let view = self.view_id();
        let backup = self.backup_of(file);
        let posix = self.posix_durable();
        loop {
            let Some(h) = self.homes.get_mut(file) else { return };
            if h.push.is_some() {
                return;
            }
            let HomeState::Owned { record, version } = &h.state else { return };
            let mut next = record.clone();
            let mut done: Vec<(u16, u64, Outcome)> = Vec::new();
            let mut notices: Vec<BreakNotice> = Vec::new();
            let progressed = run_queue(&mut next, &mut h.queue, &mut h.timers, now, true, &mut done, &mut notices);
            if !h.timers.is_empty() {
                self.timed.insert(file.clone());
            }
            let changed = next != *record;
            let version_now = if changed { *version + 1 } else { *version };
            // A record that must survive a node keeps a copy on its backup node too.
            let backup = backup.filter(|_| record.needs_backup(posix) || next.needs_backup(posix));
            let participants: BTreeSet<u16> =
                record.nodes().into_iter().chain(next.nodes()).chain(backup).filter(|n| *n != me).collect();
            let requesters: BTreeSet<u16> = done.iter().map(|(n, _, _)| *n).collect();
            let push_to: BTreeSet<u16> =
                if changed { participants.difference(&requesters).copied().collect() } else { BTreeSet::new() };
            for n in &push_to {
                out.push(Output::Send {
                    to: *n,
                    msg: Msg::Update { view, file: file.clone(), version: version_now, record: next.clone() },
                });
            }
            // Remote holders hear of their breaks after the record that shows them; this node's
            // own clients when it commits.
            let (local, remote): (Vec<BreakNotice>, Vec<BreakNotice>) = notices.into_iter().partition(|n| n.node == me);
            // An orphan's lease has no client to tell: its break runs out (`break_timeout`)
            // unless the open is reclaimed and acknowledged first.
            for n in remote.into_iter().filter(|n| n.node != ORPHAN) {
                out.push(Output::Send { to: n.node, msg: Msg::Break { view, file: file.clone(), notice: n } });
            }
            let last_requester = done.last().map(|(n, _, _)| *n);
            let replies: Vec<Reply> = done
                .into_iter()
                .map(|(n, rid, o)| {
                    let rec = participants.contains(&n).then(|| (version_now, next.clone()));
                    (n, rid, o, rec)
                })
                .collect();
            if !push_to.is_empty() {
                h.push = Some(Push { waiting: push_to, replies, next, version: version_now, notices: local });
                return;
            }
            self.commit(file, next, version_now, replies, local, changed, out);
            let h = self.homes.get_mut(file).expect("present");
            if progressed && !h.queue.is_empty() {
                continue;
            }
            if !h.queue.is_empty() || !h.timers.is_empty() {
                return;
            }
            // A file only one other node uses is delegated to it; an unused one is forgotten.
            let HomeState::Owned { record, .. } = &h.state else { return };
            if !record.has_orphans() {
                h.orphans_since = None;
            }
            let users = record.nodes();
            if record.needs_backup(posix) {
                return;
            }
            let sole = match users.as_slice() {
                [n] if *n != me => Some(*n),
                [] => last_requester.filter(|n| *n != me && *n != u16::MAX),
                _ => None,
            };
            if let Some(n) = sole {
                let record = record.clone();
                h.state = HomeState::Delegated(n);
                // When the last message to `n` is an answer (the common case: the open just
                // granted), the hand-over rides on it: the same order, one frame less.
                match out.iter_mut().rev().find(|o| matches!(o, Output::Send { to, .. } if *to == n)) {
                    Some(Output::Send { msg: Msg::Resp { then: then @ None, .. }, .. }) => {
                        *then = Some(Box::new(Delegation { file: file.clone(), record }));
                    }
                    _ => out.push(Output::Send { to: n, msg: Msg::Delegate { view, file: file.clone(), record } }),
                }
            } else if users.is_empty() && record.is_empty() {
                self.homes.remove(file);
            }
            return;
        }
    }

    /// Makes a round's record the home's, then tells this node's clients and answers.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        file: &K,
        next: FileRecord,
        version: u64,
        replies: Vec<Reply>,
        notices: Vec<BreakNotice>,
        changed: bool,
        out: &mut Vec<Output<K>>,
    ) {
        if let Some(h) = self.homes.get_mut(file) {
            h.state = HomeState::Owned { record: next, version };
        }
        for n in notices {
            out.push(Output::Break { file: file.clone(), notice: n });
        }
        if changed {
            out.push(Output::Changed(file.clone()));
        }
        for (to, rid, outcome, rec) in replies {
            self.reply(to, rid, outcome, rec, out);
        }
    }

    /// Runs the queued requests of a file delegated to this node.
    fn run_delegated(&mut self, now: Duration, file: &K, out: &mut Vec<Output<K>>) {
        let view = self.view_id();
        self.clock += 1;
        let clock = self.clock;
        let Some(LocalFile::Delegated { record, queue, timers, used }) = self.local.get_mut(file) else { return };
        *used = clock;
        let before = record.clone();
        let mut replies = Vec::new();
        let mut notices = Vec::new();
        run_queue(record, queue, timers, now, false, &mut replies, &mut notices);
        if !timers.is_empty() {
            self.timed.insert(file.clone());
        }
        let changed = *record != before;
        for n in notices {
            self.deliver_break(view, file, n, out);
        }
        if changed {
            out.push(Output::Changed(file.clone()));
        }
        for (to, rid, outcome) in replies {
            self.reply(to, rid, outcome, None, out);
        }
    }

    fn deliver_break(&mut self, view: u64, file: &K, n: BreakNotice, out: &mut Vec<Output<K>>) {
        if n.node == ORPHAN {
            return;
        }
        if n.node == self.cfg.me {
            out.push(Output::Break { file: file.clone(), notice: n });
        } else {
            out.push(Output::Send { to: n.node, msg: Msg::Break { view, file: file.clone(), notice: n } });
        }
    }

    fn evict_idle(&mut self, out: &mut Vec<Output<K>>) {
        let cap = self.cfg.max_idle_delegations;
        if self.local.len() <= cap {
            // Fewer records than the cap, idle or not: nothing to count every tick.
            return;
        }
        let mut idle: Vec<(u64, K)> = self
            .local
            .iter()
            .filter_map(|(f, l)| match l {
                LocalFile::Delegated { record, queue, used, .. } if record.is_empty() && queue.is_empty() => {
                    Some((*used, f.clone()))
                }
                _ => None,
            })
            .collect();
        if idle.len() <= cap {
            return;
        }
        idle.sort();
        let view = self.view_id();
        let n = idle.len() - cap / 2;
        for (_, f) in idle.into_iter().take(n) {
            self.local.remove(&f);
            if let Some(home) = self.view.as_ref().and_then(|v| home_of(&f, &v.members)) {
                out.push(Output::Send { to: home, msg: Msg::Drop { view, file: f } });
            }
        }
    }
}

/// Applies `queue` to `record` in order; requests that must wait stay queued without blocking
/// those behind them (an acknowledgement or a close is what they wait for). With `one`, stops
/// after the first answered request that changed the record (its change must reach the other
/// nodes first); otherwise repeats while anything changes, since a change can let a waiting
/// request through. Returns whether any request was answered.
fn run_queue(
    record: &mut FileRecord,
    queue: &mut VecDeque<Pending>,
    timers: &mut BTreeMap<LeaseId, Duration>,
    now: Duration,
    one: bool,
    replies: &mut Vec<(u16, u64, Outcome)>,
    notices: &mut Vec<BreakNotice>,
) -> bool {
    let mut answered = false;
    loop {
        let mut progress = false;
        let mut keep = VecDeque::with_capacity(queue.len());
        let mut stop = false;
        while let Some(mut p) = queue.pop_front() {
            if stop {
                keep.push_back(p);
                continue;
            }
            let before_notices = notices.len();
            let before = one.then(|| record.clone());
            match execute(record, &p.op, p.first, notices) {
                Some(outcome) => {
                    replies.push((p.from, p.rid, outcome));
                    progress = true;
                    answered = true;
                    if before.is_some_and(|b| b != *record) {
                        stop = true;
                    }
                }
                None => {
                    p.first = false;
                    keep.push_back(p);
                }
            }
            for n in &notices[before_notices..] {
                if n.ack_required {
                    timers.insert(n.lease, now);
                }
            }
        }
        *queue = keep;
        timers.retain(|l, _| record.lease(l).is_some_and(|x| x.told.is_some()));
        if stop || !progress || queue.is_empty() {
            return answered;
        }
    }
}

/// One operation on a record: `Some(answer)`, or `None` when it must wait (breaks were started).
fn execute(record: &mut FileRecord, op: &Op, first: bool, notices: &mut Vec<BreakNotice>) -> Option<Outcome> {
    let mut start = |record: &mut FileRecord, breaks: Vec<(LeaseId, u8)>| {
        for (id, to) in breaks {
            if let Some(n) = record.begin_break(&id, to) {
                notices.push(n);
            }
        }
    };
    Some(match op {
        Op::Open(req) if record.open_of(req.key).is_some() => {
            // Sent again after a view change although it was applied (its answer was lost):
            // the same answer, not a second open.
            let lease = record.open_of(req.key).and_then(|o| o.lease).and_then(|id| record.lease(&id).cloned());
            Ok(Answer::Opened(lease.map_or(Granted::default(), |l| Granted {
                state: l.state,
                epoch: l.epoch,
                breaking: l.told.is_some(),
                version: l.version,
            })))
        }
        Op::Open(req) => {
            let mut breaks = Vec::new();
            let mut v = record.decide_open(req, first, &mut breaks);
            start(record, breaks);
            // Breaks that took effect at once (an orphan's lease: no client to wait for) leave
            // nothing to wait for: decide again now.
            if v == OpenVerdict::Wait && !record.leases.iter().any(|l| l.told.is_some()) {
                let mut again = Vec::new();
                v = record.decide_open(req, false, &mut again);
                start(record, again);
            }
            match v {
                OpenVerdict::Grant(g) => Ok(Answer::Opened(record.apply_open(req, g))),
                OpenVerdict::Refuse(c) => Err(c),
                OpenVerdict::Wait => return None,
            }
        }
        Op::Close(key) => record.close(*key).map(Answer::Closed).ok_or(Conflict::NoSuchOpen),
        Op::Lock(l) => {
            let by = match l.owner {
                Owner::Open(k) => record.open_of(k).and_then(|o| o.lease),
                Owner::Posix { node, id } => {
                    // The owner's first lock through a node after its node died: its reclaim.
                    record.adopt_posix(node, id);
                    None
                }
            };
            record.lock(*l).map(|()| {
                let b = record.contend(by.as_ref());
                start(record, b);
                Answer::Done
            })
        }
        Op::Unlock { owner, offset, len } => {
            if let Owner::Posix { node, id } = *owner {
                // An owner's unlock through another node after its node died covers its orphans.
                record.adopt_posix(node, id);
            }
            record.unlock(*owner, *offset, *len).map(|()| Answer::Done)
        }
        Op::UnlockAll(owner) => {
            if let Owner::Posix { node, id } = *owner {
                record.adopt_posix(node, id);
            }
            record.unlock_all(*owner);
            Ok(Answer::Done)
        }
        Op::SetDeleteOnClose { key, on } => record.set_delete_on_close(*key, *on).map(|()| Answer::Done),
        Op::SetDeletePending(on) => {
            record.delete_pending = *on;
            Ok(Answer::Done)
        }
        Op::MayAlso { key, access, handle_breaks, lease } => {
            if *handle_breaks {
                let (b, wait) = record.handle_breaks(lease.as_ref());
                start(record, b);
                // Breaks that took effect at once (an orphan's lease) are not waited for.
                if wait && record.handle_breaks(lease.as_ref()).1 {
                    return None;
                }
            }
            record.may_also(*key, *access).map(|()| Answer::Done)
        }
        Op::Contend { by } => {
            let b = record.contend(by.as_ref());
            start(record, b);
            if record.sync_breaking() {
                // The node's mount forgets its cached pages first (`SYNC_BREAKS`).
                return None;
            }
            Ok(Answer::Done)
        }
        Op::AckBreak { lease, state } => record.ack_break(lease, *state).map(|next| {
            notices.extend(next);
            Answer::Done
        }),
        Op::Read => Ok(Answer::Record(record.clone())),
        Op::ForceBreak(lease) => {
            record.force_break(lease);
            Ok(Answer::Done)
        }
        Op::SetDurable { key, ms } => record.set_durable(*key, *ms).map(|()| Answer::Done),
        Op::Reclaim { old, new } => {
            record.reclaim(*old, *new).map(|(open, lease, locks)| Answer::Reclaimed(OpenEntry { open, lease, locks }))
        }
        Op::Expire { opens, posix } => {
            record.expire(opens, *posix);
            Ok(Answer::Done)
        }
        Op::Renamed(to) => {
            record.renamed((**to).clone());
            Ok(Answer::Done)
        }
    })
}

#[cfg(test)]
mod tests;
