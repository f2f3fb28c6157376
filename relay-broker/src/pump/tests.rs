//! The pump over in-memory sockets (`tokio::io::duplex`): each test plays the sender's
//! and the listener's client ends against the broker's server ends.

use relay_io::{Message, Role};
use tokio::io::{AsyncWriteExt as _, DuplexStream, ReadHalf, WriteHalf, duplex};

use super::*;

type Client = (
    WsReader<ReadHalf<DuplexStream>>,
    WsWriter<WriteHalf<DuplexStream>>,
);
type Server = (
    WsReader<ReadHalf<DuplexStream>>,
    WsWriter<WriteHalf<DuplexStream>>,
);

/// A client end and the broker's server end of one socket.
fn socket() -> (Client, Server) {
    let (client, server) = duplex(64 * 1024);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    (
        (
            WsReader::new(cr, Role::Client, 4096),
            WsWriter::new(cw, Role::Client),
        ),
        (
            WsReader::new(sr, Role::Server, 4096),
            WsWriter::new(sw, Role::Server),
        ),
    )
}

async fn next(reader: &mut WsReader<ReadHalf<DuplexStream>>) -> Option<Message> {
    tokio::time::timeout(std::time::Duration::from_secs(5), reader.message(1 << 20))
        .await
        .expect("a frame in time")
        .expect("a valid frame")
}

#[tokio::test]
async fn frames_pass_both_ways_pings_are_answered_and_a_close_half_closes() {
    let (mut sender, s_end) = socket();
    let (mut listener, l_end) = socket();
    let counters = Counters::default();
    let relay = relay(s_end, l_end, CancellationToken::new(), &counters);
    let play = async {
        sender.1.send(true, OpCode::Binary, b"up").await.unwrap();
        sender.1.flush().await.unwrap();
        assert_eq!(
            next(&mut listener.0).await,
            Some(Message::Binary(b"up".to_vec()))
        );
        // The broker answers a ping itself; the listener never sees it.
        sender.1.send(true, OpCode::Ping, b"p").await.unwrap();
        sender.1.flush().await.unwrap();
        assert_eq!(
            next(&mut sender.0).await,
            Some(Message::Pong(b"p".to_vec()))
        );
        // The sender half-closes: the Close goes through verbatim, and the listener
        // may still send.
        sender.1.close(1000, "done").await.unwrap();
        assert_eq!(
            next(&mut listener.0).await,
            Some(Message::Close(Some((1000, "done".into()))))
        );
        listener
            .1
            .send(true, OpCode::Binary, b"down")
            .await
            .unwrap();
        listener.1.flush().await.unwrap();
        assert_eq!(
            next(&mut sender.0).await,
            Some(Message::Binary(b"down".to_vec()))
        );
        listener.1.close(1000, "").await.unwrap();
        assert!(matches!(
            next(&mut sender.0).await,
            Some(Message::Close(Some((1000, _))))
        ));
    };
    let (relayed, ()) = tokio::join!(relay, play);
    assert_eq!(
        relayed,
        Relayed {
            to_listener: 2,
            to_sender: 4
        }
    );
    assert_eq!(counters.bytes_to_listener.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_side_that_vanishes_gets_the_other_a_1001() {
    let (sender, s_end) = socket();
    let (mut listener, l_end) = socket();
    let counters = Counters::default();
    let relay = relay(s_end, l_end, CancellationToken::new(), &counters);
    let play = async {
        drop(sender);
        assert!(matches!(
            next(&mut listener.0).await,
            Some(Message::Close(Some((close_code::GOING_AWAY, _))))
        ));
    };
    tokio::join!(relay, play);
}

#[tokio::test]
async fn a_framing_violation_gets_its_sender_a_1002_and_the_other_side_a_1001() {
    // The sender's end written as raw bytes, to break the protocol.
    let (client, server) = duplex(64 * 1024);
    let (cr, mut raw) = tokio::io::split(client);
    let mut s_reader = WsReader::new(cr, Role::Client, 4096);
    let (sr, sw) = tokio::io::split(server);
    let s_end = (
        WsReader::new(sr, Role::Server, 4096),
        WsWriter::new(sw, Role::Server),
    );
    let (mut listener, l_end) = socket();
    let counters = Counters::default();
    let relay = relay(s_end, l_end, CancellationToken::new(), &counters);
    let play = async {
        // An unmasked frame from a client (RFC 6455 §5.1).
        raw.write_all(&[0x82, 0x02, b'h', b'i']).await.unwrap();
        raw.flush().await.unwrap();
        assert!(matches!(
            next(&mut s_reader).await,
            Some(Message::Close(Some((close_code::PROTOCOL_ERROR, _))))
        ));
        assert!(matches!(
            next(&mut listener.0).await,
            Some(Message::Close(Some((close_code::GOING_AWAY, _))))
        ));
    };
    tokio::join!(relay, play);
}

#[tokio::test]
async fn the_hard_stop_closes_both_sides_with_1001() {
    let (mut sender, s_end) = socket();
    let (mut listener, l_end) = socket();
    let counters = Counters::default();
    let stop = CancellationToken::new();
    let relay = relay(s_end, l_end, stop.clone(), &counters);
    let play = async {
        stop.cancel();
        for reader in [&mut sender.0, &mut listener.0] {
            assert!(matches!(
                next(reader).await,
                Some(Message::Close(Some((close_code::GOING_AWAY, _))))
            ));
        }
    };
    tokio::join!(relay, play);
}
