//! Datagrams in batches: what is waiting is taken in one wake-up, and
//! answers leave one `sendmmsg(2)` for every datagram a
//! wake-up produced, instead of one `sendto(2)` each. Measured on the auth
//! shards (bench/RESULTS.md), `sendto` was 45% of warden's CPU at full load,
//! half of it the system call's exit (where the kernel may switch to the
//! NAS-side thread the datagram just woke); a batch pays that once.
//!
//! Safe code throughout: rustix wraps the system call.

use crate::radius::server::{Port, Server};
use bytes::Bytes;
use rustix::net::addr::SocketAddrArg;
use rustix::net::{SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Hands the datagram just received (`first`: its length in `buf`, its
/// source) to `server`, then whatever else is already waiting on `socket`,
/// at most `more`: one wake-up, one batch, answered (or synced) together.
pub fn take_waiting(
    socket: &UdpSocket,
    buf: &mut [u8],
    first: (usize, SocketAddr),
    more: usize,
    server: &mut Server,
    port: Port,
    now: Instant,
) {
    let (n, from) = first;
    server.handle_datagram(port, from, &buf[..n], now);
    for _ in 0..more {
        match socket.try_recv_from(buf) {
            Ok((n, from)) => server.handle_datagram(port, from, &buf[..n], now),
            Err(_) => break,
        }
    }
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
