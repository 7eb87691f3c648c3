//! Datagrams in batches: what is waiting is taken in one wake-up, with one
//! `recvmmsg(2)`, and answers leave one `sendmmsg(2)` for every datagram a
//! wake-up produced, instead of one `recvfrom(2)` and one `sendto(2)` each.
//! Measured on the auth shards (bench/RESULTS.md), `sendto` was 45% of
//! warden's CPU at full load, half of it the system call's exit (where the
//! kernel may switch to the NAS-side thread the datagram just woke); a batch
//! pays that once.
//!
//! Safe code throughout: rustix wraps `sendmmsg`, nix wraps `recvmmsg`
//! (rustix has no `recvmmsg`; nix is already in the tree through boringtun).

use crate::radius::server::{Port, Server};
use bytes::Bytes;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest RADIUS packet is 4096 bytes; one more byte tells a longer
/// datagram apart (the decoder refuses it as too long).
pub const SLOT: usize = 4097;

/// Datagrams one `recvmmsg` takes at most.
const RECV_SLOTS: usize = 64;

/// Room for the datagrams one `recvmmsg` takes, allocated once per socket
/// (256 KiB, touched only as far as datagrams fill it).
pub struct Batch {
    storage: Vec<u8>,
    /// Length and source of each datagram the last call took.
    got: Vec<(usize, Option<SocketAddr>)>,
}

thread_local! {
    /// The `mmsghdr` array `recvmmsg` fills, one per thread: it holds raw
    /// pointers, so it cannot live in a task that moves between threads,
    /// and it is used only inside one synchronous call.
    static HEADERS: std::cell::RefCell<MultiHeaders<SockaddrStorage>> =
        std::cell::RefCell::new(MultiHeaders::preallocate(RECV_SLOTS, None));
}

impl Batch {
    pub fn new() -> Self {
        Self { storage: vec![0; RECV_SLOTS * SLOT], got: Vec::with_capacity(RECV_SLOTS) }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands the datagram just received (`first`: its length in `buf`, its
/// source) to `server`, then whatever else is already waiting on `socket`,
/// at most `more`: one wake-up, one batch, answered (or synced) together.
#[allow(clippy::too_many_arguments)] // the socket, its buffers, the core and the batch's bounds
pub fn take_waiting(
    socket: &UdpSocket,
    buf: &[u8],
    first: (usize, SocketAddr),
    batch: &mut Batch,
    more: usize,
    server: &mut Server,
    port: Port,
    now: Instant,
) {
    let (n, from) = first;
    server.handle_datagram(port, from, &buf[..n], now);
    let mut taken = 0;
    while taken < more {
        // Nothing waiting is the usual end (WouldBlock, which also tells
        // tokio the socket is drained); another error is the next
        // receive's to see.
        let want = (more - taken).min(RECV_SLOTS);
        if socket.try_io(Interest::READABLE, || receive(socket, batch, want)).is_err() {
            return;
        }
        for (i, &(n, from)) in batch.got.iter().enumerate() {
            // A datagram without an IPv4 or IPv6 source cannot come from a NAS.
            if let Some(from) = from {
                server.handle_datagram(port, from, &batch.storage[i * SLOT..i * SLOT + n], now);
            }
        }
        taken += batch.got.len();
        if batch.got.len() < want {
            return;
        }
    }
}

/// One `recvmmsg`: what is waiting, at most `want`, into `batch`.
fn receive(socket: &UdpSocket, batch: &mut Batch, want: usize) -> io::Result<()> {
    batch.got.clear();
    let (storage, got) = (&mut batch.storage, &mut batch.got);
    HEADERS.with_borrow_mut(|headers| {
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            storage.chunks_exact_mut(SLOT).take(want).map(|c| [IoSliceMut::new(c)]).collect();
        let msgs = recvmmsg(socket.as_raw_fd(), headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
            .map_err(io::Error::from)?;
        for m in msgs {
            got.push((m.bytes.min(SLOT), m.address.as_ref().and_then(socket_addr)));
        }
        Ok(())
    })
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Datagrams per system call (the kernel's UIO_MAXIOV is 1024).
const MAX_BATCH: usize = 64;

/// Sends every `(to, payload)`, in order, as few system calls as it takes.
/// A datagram the kernel refuses (an unreachable destination, say) is
/// skipped and the rest still go; the first such error is returned after.
pub async fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddr, Bytes)]) -> io::Result<()> {
    let mut first_error = None;
    let mut rest = datagrams;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MAX_BATCH)];
        match socket.async_io(Interest::WRITABLE, || send_some(socket, chunk)).await {
            Ok(sent) => rest = &rest[sent.max(1).min(rest.len())..],
            Err(e) => {
                // sendmmsg reports an error only for the first datagram of
                // the call: skip that one and go on with the others.
                first_error.get_or_insert(e);
                rest = &rest[1..];
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One `sendmmsg`: how many of `chunk` (from its start) were sent.
fn send_some(socket: &UdpSocket, chunk: &[(SocketAddr, Bytes)]) -> io::Result<usize> {
    let addrs: Vec<SocketAddrAny> = chunk.iter().map(|(to, _)| to.as_any()).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, p)| [IoSlice::new(p)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        chunk.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<rustix::net::MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| rustix::net::MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    Ok(sendmmsg(socket, &mut msgs, SendFlags::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_datagram_arrives_in_order_to_its_destination() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ta, tb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // More than one batch, alternating destinations, varying sizes.
        let datagrams: Vec<(SocketAddr, Bytes)> = (0..150u16)
            .map(|i| (if i % 2 == 0 { ta } else { tb }, Bytes::from(vec![i as u8; 20 + usize::from(i)])))
            .collect();
        send_all(&tx, &datagrams).await.unwrap();
        let mut buf = [0u8; 512];
        for (i, (to, payload)) in datagrams.iter().enumerate() {
            let s = if *to == ta { &a } else { &b };
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &payload[..], "datagram {i}");
            assert_eq!(from, tx.local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn waiting_datagrams_are_taken_in_order_with_their_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // More than one recvmmsg's worth, two sources, sizes up to past a
        // slot (truncated to it: the decoder refuses it as too long).
        let sent: Vec<(SocketAddr, Vec<u8>)> = (0..150usize)
            .map(|i| {
                let s = if i % 3 == 0 { &b } else { &a };
                let len = if i == 7 { 5000 } else { 20 + i };
                let payload = vec![i as u8; len];
                s.send_to(&payload, to).unwrap();
                (s.local_addr().unwrap(), payload)
            })
            .collect();
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            rx.readable().await.unwrap();
            while rx.try_io(Interest::READABLE, || receive(&rx, &mut batch, RECV_SLOTS)).is_ok() {
                for (i, &(n, from)) in batch.got.iter().enumerate() {
                    got.push((from.unwrap(), batch.storage[i * SLOT..i * SLOT + n].to_vec()));
                }
            }
        }
        assert_eq!(got.len(), sent.len());
        for (i, ((from, payload), (src, want))) in got.iter().zip(&sent).enumerate() {
            assert_eq!(from, src, "datagram {i}");
            assert_eq!(payload[..], want[..want.len().min(SLOT)], "datagram {i}");
        }
    }

    #[tokio::test]
    async fn a_refused_datagram_does_not_stop_the_others() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let datagrams = vec![(bad, Bytes::from_static(b"x")), (rx.local_addr().unwrap(), Bytes::from_static(b"ok"))];
        assert!(send_all(&tx, &datagrams).await.is_err());
        let mut buf = [0u8; 16];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok");
    }
}
