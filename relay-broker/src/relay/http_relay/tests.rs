//! The listener's side of an HTTP rendezvous on an in-memory socket: the response reaches
//! the waiting sender as it arrives, and a response cut short fails instead of ending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_core::frame::OpCode;
use relay_io::{Role, WsError, WsReader, WsWriter};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use super::rendezvous::Rendezvous;
use crate::config::Limits;
use crate::relay::Relay;
use crate::relay::rendezvous::{ListenerResponse, RequestSlot, ResponseBody};
use crate::relay::socket::halves;
use crate::seams::node::ListenerKey;

const IDLE: Duration = Duration::from_secs(5);

struct Exchange {
    listener: WsWriter<WriteHalf<DuplexStream>>,
    _listener_reader: WsReader<ReadHalf<DuplexStream>>,
    answer: oneshot::Receiver<ListenerResponse>,
    task: tokio::task::JoinHandle<Result<(), WsError>>,
}

/// A pending request `r-1` and the broker's side of its rendezvous, running.
fn pending() -> Exchange {
    let relay = Arc::new(Relay::for_tests(Limits::default()));
    let key = ListenerKey {
        node: relay.node.clone(),
        channel: 7,
    };
    let (respond, answer) = oneshot::channel();
    let slot = RequestSlot {
        listener_id: key.clone(),
        respond,
        outgoing: std::sync::Mutex::new(None),
    };
    let guard = relay.rendezvous.add_request("r-1", slot).unwrap();
    let (server, client) = tokio::io::duplex(64 * 1024);
    let (mut reader, mut writer) = halves(Box::new(server), 16 * 1024);
    let task = tokio::spawn(async move {
        let _guard = guard;
        let rendezvous = Rendezvous {
            shared: &relay,
            request_id: "r-1",
            listener_id: &key,
            idle: IDLE,
        };
        rendezvous.relay_response(&mut reader, &mut writer).await
    });
    let (r, w) = tokio::io::split(client);
    Exchange {
        listener: WsWriter::new(w, Role::Client),
        _listener_reader: WsReader::new(r, Role::Client, 16 * 1024),
        answer,
        task,
    }
}

fn head(request_id: &str, body: bool) -> String {
    format!(r#"{{"response":{{"requestId":"{request_id}","statusCode":200,"body":{body}}}}}"#)
}

async fn stream(
    answer: oneshot::Receiver<ListenerResponse>,
) -> tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>> {
    match answer.await.unwrap().body {
        ResponseBody::Stream(rx) => rx,
        other => panic!("expected a streamed body, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn each_fragment_reaches_the_sender_before_the_next_is_sent() {
    let mut x = pending();
    x.listener.text(&head("r-1", true)).await.unwrap();
    x.listener
        .send(false, OpCode::Binary, b"data: one\n\n")
        .await
        .unwrap();
    x.listener.flush().await.unwrap();
    let mut body = stream(x.answer).await;
    assert_eq!(&body.recv().await.unwrap().unwrap()[..], b"data: one\n\n");
    x.listener
        .send(true, OpCode::Continuation, b"data: two\n\n")
        .await
        .unwrap();
    x.listener.flush().await.unwrap();
    assert_eq!(&body.recv().await.unwrap().unwrap()[..], b"data: two\n\n");
    assert!(
        body.recv().await.is_none(),
        "the body ends with the last fragment"
    );
    x.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_listener_gone_mid_body_makes_the_body_fail_not_end() {
    let mut x = pending();
    x.listener.text(&head("r-1", true)).await.unwrap();
    x.listener
        .send(false, OpCode::Binary, b"half of it")
        .await
        .unwrap();
    x.listener.flush().await.unwrap();
    let mut body = stream(x.answer).await;
    assert_eq!(&body.recv().await.unwrap().unwrap()[..], b"half of it");
    drop(x.listener);
    drop(x._listener_reader);
    assert!(
        body.recv().await.unwrap().is_err(),
        "an aborted body is an error"
    );
    assert!(x.task.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_past_the_idle_bound_fails() {
    let mut x = pending();
    x.listener.text(&head("r-1", true)).await.unwrap();
    x.listener
        .send(false, OpCode::Binary, b"then nothing")
        .await
        .unwrap();
    x.listener.flush().await.unwrap();
    let mut body = stream(x.answer).await;
    assert!(body.recv().await.unwrap().is_ok());
    let started = tokio::time::Instant::now();
    assert!(body.recv().await.unwrap().is_err());
    assert!(
        started.elapsed() >= IDLE,
        "failed only after the idle bound"
    );
    assert!(x.task.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_response_without_a_body_completes_empty() {
    let mut x = pending();
    x.listener.text(&head("r-1", false)).await.unwrap();
    let answer = x.answer.await.unwrap();
    assert_eq!(answer.head.status_code, 200);
    assert!(matches!(answer.body, ResponseBody::Empty));
    x.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_response_to_another_request_or_a_body_first_is_refused() {
    let mut x = pending();
    x.listener.text(&head("r-2", false)).await.unwrap();
    assert!(x.task.await.unwrap().is_err());
    let mut y = pending();
    y.listener
        .send(true, OpCode::Binary, b"body first")
        .await
        .unwrap();
    y.listener.flush().await.unwrap();
    assert!(y.task.await.unwrap().is_err());
}
