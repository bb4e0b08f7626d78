//! Value types of the namespace layer: identities, attributes, attribute changes, directory
//! entries and file-system statistics. Plain data, shared by every backend and protocol.

use std::fmt;
use std::sync::Arc;

/// Longest persistent identity a backend may hand out, in bytes. An NFSv3 handle (64 bytes)
/// carries a version byte, the 8-byte [`VolumeId`], the identity and an 8-byte MAC.
pub const MAX_FILE_ID_LEN: usize = 40;

/// The persistent identity of one file, opaque bytes chosen by the backend (a GlusterFS GFID, a
/// kernel file handle, an inode number plus birth time). Equal ids name the same file on every
/// node and across restarts; the id of a deleted file resolves to [`crate::vfs::VfsError::Stale`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    len: u8,
    bytes: [u8; MAX_FILE_ID_LEN],
}

impl FileId {
    /// Wraps identity bytes; `None` when they are empty or longer than [`MAX_FILE_ID_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_FILE_ID_LEN {
            return None;
        }
        let mut id = Self { len: bytes.len() as u8, bytes: [0; MAX_FILE_ID_LEN] };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    /// The identity bytes, to embed in a protocol handle.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Identifies the volume a [`FileId`] belongs to; the same on every node serving it, so a
/// handle minted on one node is recognised on another and refused by a different volume.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VolumeId(pub [u8; 8]);

/// What kind of object a file is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link (never followed by the server while resolving a name).
    Symlink,
    /// Block device.
    BlockDevice,
    /// Character device.
    CharDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileType {
    /// From the `S_IFMT` bits of a `st_mode`.
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Self::Directory,
            libc::S_IFLNK => Self::Symlink,
            libc::S_IFBLK => Self::BlockDevice,
            libc::S_IFCHR => Self::CharDevice,
            libc::S_IFIFO => Self::Fifo,
            libc::S_IFSOCK => Self::Socket,
            _ => Self::Regular,
        }
    }

    /// From a directory entry's `d_type`; `None` for `DT_UNKNOWN` (the file system did not
    /// say) and anything unexpected.
    pub fn from_dtype(dtype: u8) -> Option<Self> {
        Some(match dtype {
            libc::DT_REG => Self::Regular,
            libc::DT_DIR => Self::Directory,
            libc::DT_LNK => Self::Symlink,
            libc::DT_BLK => Self::BlockDevice,
            libc::DT_CHR => Self::CharDevice,
            libc::DT_FIFO => Self::Fifo,
            libc::DT_SOCK => Self::Socket,
            _ => return None,
        })
    }
}

/// A special file [`crate::vfs::Backend::mknod`] makes: a named pipe, a Unix socket's name, or
/// a device node with its numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SpecialFile {
    /// Named pipe (`mkfifo`).
    Fifo,
    /// Unix-domain socket name (what `bind()` of an `AF_UNIX` socket creates).
    Socket,
    /// Character device (major, minor).
    CharDevice(u32, u32),
    /// Block device (major, minor).
    BlockDevice(u32, u32),
}

impl SpecialFile {
    /// The file type it has once made.
    pub fn file_type(self) -> FileType {
        match self {
            Self::Fifo => FileType::Fifo,
            Self::Socket => FileType::Socket,
            Self::CharDevice(..) => FileType::CharDevice,
            Self::BlockDevice(..) => FileType::BlockDevice,
        }
    }

    /// True for device nodes: only a privileged (non-squashed root) caller may make them, as
    /// `mknod(2)` needs `CAP_MKNOD` for them and not for fifos or sockets.
    pub fn is_device(self) -> bool {
        matches!(self, Self::CharDevice(..) | Self::BlockDevice(..))
    }

    /// The `S_IFMT` bits of `mknod(2)`'s mode.
    pub fn mode_type(self) -> u32 {
        match self {
            Self::Fifo => libc::S_IFIFO,
            Self::Socket => libc::S_IFSOCK,
            Self::CharDevice(..) => libc::S_IFCHR,
            Self::BlockDevice(..) => libc::S_IFBLK,
        }
    }

    /// `mknod(2)`'s `dev` argument (0 unless a device).
    pub fn dev(self) -> libc::dev_t {
        match self {
            Self::CharDevice(major, minor) | Self::BlockDevice(major, minor) => libc::makedev(major, minor),
            Self::Fifo | Self::Socket => 0,
        }
    }
}

/// A point in time, seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC (negative before).
    pub secs: i64,
    /// Nanoseconds, 0..1_000_000_000.
    pub nanos: u32,
}

/// Attributes of a file, as both NFS `fattr3` and SMB file information need them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Attr {
    /// Object kind.
    pub ftype: FileType,
    /// Permission bits (`0o7777`), without the type bits.
    pub mode: u32,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes allocated on disk.
    pub used: u64,
    /// Device numbers (major, minor) of a device node.
    pub rdev: (u32, u32),
    /// File-system id (stable per volume, so clients see one file system).
    pub fsid: u64,
    /// Number unique per file within the volume (inode number): NFS `fileid`, SMB `IndexNumber`.
    pub fileid: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Creation time, when the backend knows it (SMB `CreationTime`).
    pub btime: Option<Timestamp>,
}

impl Attr {
    /// Attributes carrying only a type, permission bits and an owner, everything else zero:
    /// what decisions on access rights read.
    pub fn with_owner(ftype: FileType, mode: u32, uid: u32, gid: u32) -> Attr {
        let t = Timestamp::default();
        Attr {
            ftype,
            mode,
            nlink: 1,
            uid,
            gid,
            size: 0,
            used: 0,
            rdev: (0, 0),
            fsid: 0,
            fileid: 0,
            atime: t,
            mtime: t,
            ctime: t,
            btime: None,
        }
    }
}

/// How to change a timestamp in [`SetAttr`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SetTime {
    /// Leave it alone.
    #[default]
    DontChange,
    /// Set it to the server's current time.
    ServerNow,
    /// Set it to this time.
    Client(Timestamp),
}

/// Attribute changes: `None` / [`SetTime::DontChange`] fields are left alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SetAttr {
    /// New permission bits (`0o7777`).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// Truncate or extend to this size (regular files).
    pub size: Option<u64>,
    /// New access time.
    pub atime: SetTime,
    /// New modification time.
    pub mtime: SetTime,
}

impl SetAttr {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How [`crate::vfs::Backend::create`] treats an existing name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CreateHow {
    /// Create, or open the existing file (applying `attrs`, e.g. a truncation) if it exists.
    Unchecked(SetAttr),
    /// Create; fail with [`crate::vfs::VfsError::Exists`] if the name exists.
    Guarded(SetAttr),
    /// NFSv3 exclusive create: create with this verifier stored in the file's times; a retry
    /// with the same verifier succeeds on the file it created, any other existing file fails
    /// with `Exists`. The caller sets real attributes afterwards with `setattr`.
    Exclusive([u8; 8]),
}

/// How far a write must reach stable storage before the call returns.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Stability {
    /// Page cache is enough; a later `fsync` (NFS COMMIT) makes it stable.
    Unstable,
    /// Data (and the metadata needed to read it back) is on stable storage.
    DataSync,
    /// Data and all metadata are on stable storage.
    FileSync,
}

/// One directory entry from [`crate::vfs::Backend::readdir`]. `.` and `..` are never listed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirEntry {
    /// The entry's name (one component).
    pub name: Vec<u8>,
    /// Resume position *after* this entry: pass it back to continue the listing.
    pub cookie: u64,
    /// The entry's `fileid` (inode number), as [`Attr::fileid`] reports it.
    pub fileid: u64,
    /// Its type when the listing tells it without attributes (`d_type`), else `None` (a
    /// `plus` entry's type is in its attributes).
    pub kind: Option<FileType>,
    /// Identity and attributes, present when the listing asked for them (`plus`).
    pub plus: Option<(FileId, Attr)>,
}

/// A page of a directory listing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReadDir {
    /// Entries in order.
    pub entries: Vec<DirEntry>,
    /// True when the listing reached the end of the directory.
    pub eof: bool,
    /// The directory's attributes after the listing, when the backend has them at hand (saves
    /// the protocol another call for the reply's directory attributes).
    pub dir_attr: Option<Attr>,
}

/// Bytes of an open file, left there for the caller to send with `splice` or `sendfile` (no copy through
/// user space).
#[derive(Clone, Debug)]
pub struct FileSlice {
    /// The file, open for reading.
    pub fd: Arc<std::fs::File>,
    /// Where the bytes start.
    pub offset: u64,
    /// How many bytes: the file had at least this many there when the read was answered (if it
    /// shrinks meanwhile, the sender cannot send them all and must say so).
    pub len: u32,
}

/// The data of a read ([`crate::vfs::Backend::read_slice`]).
#[derive(Clone, Debug)]
pub enum ReadData {
    /// Already in memory.
    Bytes(Vec<u8>),
    /// Still in the file.
    File(FileSlice),
}

impl ReadData {
    /// Number of bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::File(f) => f.len as usize,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// File-system statistics (NFS FSSTAT, SMB FileFsSizeInformation).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FsStat {
    /// Total size in bytes.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Bytes available to unprivileged users.
    pub avail_bytes: u64,
    /// Total file slots (inodes).
    pub total_files: u64,
    /// Free file slots.
    pub free_files: u64,
    /// File slots available to unprivileged users.
    pub avail_files: u64,
    /// Block size, for clients that report it.
    pub block_size: u32,
    /// Longest name a directory entry may have.
    pub name_max: u32,
}

/// On the wire between nodes (the cluster-wide lock state): the identity bytes.
impl serde::Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "1 to {MAX_FILE_ID_LEN} identity bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<FileId, E> {
                FileId::new(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FileId, A::Error> {
                let mut buf = [0u8; MAX_FILE_ID_LEN];
                let mut n = 0;
                while let Some(b) = seq.next_element::<u8>()? {
                    if n == MAX_FILE_ID_LEN {
                        return Err(serde::de::Error::invalid_length(n + 1, &self));
                    }
                    buf[n] = b;
                    n += 1;
                }
                FileId::new(&buf[..n]).ok_or_else(|| serde::de::Error::invalid_length(n, &self))
            }
        }
        d.deserialize_bytes(V)
    }
}
