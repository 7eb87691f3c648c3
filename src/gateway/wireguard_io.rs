//! The WireGuard plane's IO: the UDP socket with batched receive and send
//! (quinn-udp), and the TUN write batch (GRO). No decisions here; the
//! router core makes them (`gateway::wireguard_task` drives both).

use tokio::net::UdpSocket;
use tun_rs::{AsyncDevice, GROTable, VIRTIO_NET_HDR_LEN};

/// The UDP socket with batched I/O (quinn-udp): up to 32 datagrams per
/// receive call (recvmmsg, and GRO where the kernel coalesces), and runs of
/// same-size datagrams to one peer in one send (GSO).
pub(super) struct Udp {
    socket: UdpSocket,
    pub(super) state: quinn_udp::UdpSocketState,
}

/// Socket buffer sizes asked for (7 MiB, as wireguard-go).
const SOCKET_BUFFER: usize = 7 << 20;

/// Receive buffer per slot: a GRO batch can hold up to 64 KiB.
pub(super) const SLOT: usize = 65_536;

impl Udp {
    pub(super) fn new(socket: UdpSocket) -> std::io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // A peer sends in bursts; the default ~200 KiB receive buffer
        // overflowed under one TCP flow (43k datagrams dropped in 5 s,
        // each a TCP retransmission inside the tunnel). Ask for what
        // wireguard-go asks for; the kernel caps it at net.core.rmem_max.
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        tracing::debug!(
            recv = sock.recv_buffer_size().unwrap_or(0),
            send = sock.send_buffer_size().unwrap_or(0),
            "WireGuard socket buffers"
        );
        Ok(Self { socket, state })
    }

    fn recv_now(&self, storage: &mut [u8], meta: &mut [quinn_udp::RecvMeta]) -> std::io::Result<usize> {
        let mut slots: Vec<std::io::IoSliceMut<'_>> = storage.chunks_mut(SLOT).map(std::io::IoSliceMut::new).collect();
        self.state.recv((&self.socket).into(), &mut slots, meta)
    }

    pub(super) async fn recv(&self, storage: &mut [u8], meta: &mut [quinn_udp::RecvMeta]) -> std::io::Result<usize> {
        self.socket.async_io(tokio::io::Interest::READABLE, || self.recv_now(storage, meta)).await
    }

    pub(super) fn try_recv(&self, storage: &mut [u8], meta: &mut [quinn_udp::RecvMeta]) -> std::io::Result<usize> {
        self.socket.try_io(tokio::io::Interest::READABLE, || self.recv_now(storage, meta))
    }

    pub(super) async fn send(
        &self,
        to: std::net::SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> std::io::Result<()> {
        let t = quinn_udp::Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
        self.socket.async_io(tokio::io::Interest::WRITABLE, || self.state.try_send((&self.socket).into(), &t)).await
    }
}

/// Inner packets on their way to the TUN, written as one batch: with
/// offloads, consecutive segments of a TCP flow are coalesced (GRO) into
/// one write. Buffers are kept between batches.
pub(super) struct TunBatch {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl TunBatch {
    pub(super) fn new() -> Self {
        Self { bufs: Vec::new(), used: 0, gro: GROTable::default() }
    }

    pub(super) fn push(&mut self, packet: &[u8]) {
        if self.used == self.bufs.len() {
            // Coalescing appends later segments to the first one's buffer,
            // and only within its capacity: room for a whole 64 KiB
            // super-packet, or nothing coalesces at all.
            self.bufs.push(Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535));
        }
        let b = &mut self.bufs[self.used];
        b.clear();
        // Room for the virtio header the write puts in front.
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.used += 1;
    }

    pub(super) async fn flush(&mut self, tun: &AsyncDevice) {
        if self.used > 0 {
            if let Err(e) = tun.send_multiple(&mut self.gro, &mut self.bufs[..self.used], VIRTIO_NET_HDR_LEN).await {
                tracing::debug!(error = %e, "TUN write failed");
            }
            self.used = 0;
        }
    }
}
