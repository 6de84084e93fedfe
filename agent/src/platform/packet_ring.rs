//! The capture's kernel side on Linux: a `TPACKET_V3` receive ring.
//!
//! Why a ring and not `recvmsg` per packet: a reader blocked on a packet
//! socket is woken by every packet, and on a small host that wake-up takes
//! a core from the very call whose wake-up the capture is timing. Measured
//! here (2 cores, a reader idle in `read()` until its peer's FIN, 300
//! rounds): p50 17 µs from the FIN's arrival with nobody woken for the
//! packet, 42–45 µs with a capture thread woken per packet. With the ring
//! the kernel copies each packet's headers and its stamp into blocks shared
//! with the reader and wakes the reader once per block — when it is full,
//! or [`RETIRE_MS`] after it got its first packet — so no wake-up lands on
//! a reader's FIN (p50 17 µs again, measured the same way).
//!
//! Each packet keeps the kernel's stamp (`CLOCK_REALTIME`, taken as the
//! packet reached the stack or left it, or, when nothing on the host asked
//! for stamps, as it was copied into the ring: the same moment, in the same
//! softirq), converted here to the monotonic clock.

#![allow(unsafe_code)]

use super::PacketTap;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

/// One block of the ring: about 900 packets (each takes its ring header,
/// the link address and up to the 160 bytes the filter keeps: 288 bytes a
/// packet measured, 7 266 packets in 2 MiB).
const BLOCK_BYTES: usize = 256 * 1024;
/// Blocks in the ring: 4 MiB per capture, room for about 14 500 packets
/// while the reader is held up — 170 ms of a flood of full-sized segments
/// at 1 Gbit/s (83 000 packets a second); on veth, where GRO makes 64 kB
/// packets, far more. What does not fit is counted, and the case says so.
const BLOCKS: usize = 16;
/// `TPACKET_V3` still wants a frame size; any aligned one will do.
const FRAME_BYTES: usize = 2048;
/// A block with packets is handed over at the latest this long after its
/// first packet (the kernel's retire timer).
const RETIRE_MS: u32 = 2;
/// How long the kernel may hold a packet before handing it over: the
/// retire time, plus a timer tick of a 100 Hz kernel (older kernels run
/// the retire timer on ticks; 6.x ones measured here hand over within
/// 2.0 ms).
const HANDED_OVER_WITHIN: Duration = Duration::from_millis(RETIRE_MS as u64 + 10);

/// A packet socket with its receive ring mapped.
pub struct PacketRing {
    socket: socket2::Socket,
    ring: NonNull<u8>,
    /// The block the kernel hands over next.
    next_block: usize,
    /// Packets the kernel had no room for, counted so far.
    lost: u64,
}

// SAFETY: the mapping belongs to this value alone (the socket is not
// shared), so it may move to the capture thread with it.
unsafe impl Send for PacketRing {}

fn set_option<T>(socket: &socket2::Socket, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the fd is open; `value` is a valid T for the call and its
    // size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PacketRing {
    /// A ring on `socket` (a fresh SOCK_DGRAM packet socket with its filter).
    pub fn on(socket: socket2::Socket) -> io::Result<Self> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        set_option(&socket, libc::PACKET_VERSION, &version)?;
        let request = libc::tpacket_req3 {
            tp_block_size: BLOCK_BYTES as u32,
            tp_block_nr: BLOCKS as u32,
            tp_frame_size: FRAME_BYTES as u32,
            tp_frame_nr: (BLOCK_BYTES / FRAME_BYTES * BLOCKS) as u32,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(&socket, libc::PACKET_RX_RING, &request)?;
        // SAFETY: maps the ring the kernel just set up on this socket, its
        // exact size; the result is checked before use.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BLOCK_BYTES * BLOCKS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = NonNull::new(mapped.cast::<u8>())
            .ok_or_else(|| io::Error::other("the kernel mapped the ring at address 0"))?;
        Ok(Self {
            socket,
            ring,
            next_block: 0,
            lost: 0,
        })
    }

    /// Walk one handed-over block; false when the kernel still has it.
    fn read_block(&mut self, each: &mut dyn FnMut(&[u8], Option<u64>)) -> bool {
        // SAFETY: `block` lies within the mapping (next_block < BLOCKS). The
        // kernel owns a block until it sets TP_STATUS_USER in its status,
        // read volatile, and writes nothing to it until we set it back to
        // TP_STATUS_KERNEL (the fences order our reads before that). Every
        // offset taken from the block is checked against BLOCK_BYTES before
        // it is read, and packet headers are read unaligned.
        unsafe {
            let block = self.ring.as_ptr().add(self.next_block * BLOCK_BYTES);
            let descriptor = block.cast::<libc::tpacket_block_desc>();
            let status = &raw mut (*descriptor).hdr.bh1.block_status;
            if std::ptr::read_volatile(status) & libc::TP_STATUS_USER == 0 {
                return false;
            }
            fence(Ordering::Acquire);
            let header = std::ptr::read_volatile(&raw const (*descriptor).hdr.bh1);
            let mut offset = header.offset_to_first_pkt as usize;
            // One reading of the clocks for the whole block.
            let now = super::clock::real_and_monotonic_now();
            for _ in 0..header.num_pkts {
                if offset + std::mem::size_of::<libc::tpacket3_hdr>() > BLOCK_BYTES {
                    break;
                }
                let packet: libc::tpacket3_hdr = std::ptr::read_unaligned(block.add(offset).cast());
                let start = offset + usize::from(packet.tp_net);
                let length = packet.tp_snaplen as usize;
                if start + length > BLOCK_BYTES {
                    break;
                }
                let stamp_real_ns =
                    u64::from(packet.tp_sec) * 1_000_000_000 + u64::from(packet.tp_nsec);
                let bytes = std::slice::from_raw_parts(block.add(start), length);
                let stamp =
                    now.and_then(|now| super::clock::real_to_monotonic_at(stamp_real_ns, now));
                each(bytes, stamp);
                if packet.tp_next_offset == 0 {
                    break;
                }
                offset += packet.tp_next_offset as usize;
            }
            fence(Ordering::Release);
            std::ptr::write_volatile(status, libc::TP_STATUS_KERNEL);
        }
        self.next_block = (self.next_block + 1) % BLOCKS;
        true
    }
}

impl PacketTap for PacketRing {
    fn drain(&mut self, each: &mut dyn FnMut(&[u8], Option<u64>)) -> io::Result<usize> {
        let mut blocks = 0;
        while blocks < BLOCKS && self.read_block(each) {
            blocks += 1;
        }
        Ok(blocks)
    }

    fn wait(&self, wake: &socket2::Socket, timeout: Duration) -> io::Result<()> {
        wait_readable(&self.socket, wake, timeout).map(drop)
    }

    fn handed_over_within(&self) -> Duration {
        HANDED_OVER_WITHIN
    }

    fn lost(&mut self) -> io::Result<u64> {
        let mut stats = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut length = std::mem::size_of_val(&stats) as libc::socklen_t;
        // SAFETY: the fd is open; `stats` and `length` are valid and
        // writable for the call, `length` holding the room in `stats`.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut length,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel's counters restart with every read.
        self.lost += u64::from(stats.tp_drops);
        Ok(self.lost)
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `on`, once; nothing
        // reads it afterwards (the borrow checker ends every use first).
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), BLOCK_BYTES * BLOCKS);
        }
    }
}

/// Wait until `socket` or `wake` is readable, or `timeout` has passed;
/// true when `socket` is. Precise to the millisecond (unlike a socket's
/// read timeout, which the kernel counts in scheduler ticks: 1 ms waited
/// 8 ms on a 250 Hz kernel).
fn wait_readable(
    socket: &socket2::Socket,
    wake: &socket2::Socket,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    let mut fds = [socket.as_raw_fd(), wake.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of two pollfd for the duration of
    // the call, and its length is passed with it.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(error)
        };
    }
    Ok(fds[0].revents & libc::POLLIN != 0)
}
