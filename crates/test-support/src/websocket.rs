//! A websocket echo app: echoes every text and binary message.

use futures_util::{SinkExt, StreamExt};

/// The echo app on a free port.
pub async fn start_echo() -> crate::Running {
    let listener = crate::loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = crate::stop_channel();
    let task = tokio::spawn(async move {
        let mut stopped = std::pin::pin!(stopped);
        loop {
            let (stream, _) = tokio::select! {
                () = &mut stopped => return,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    crate::Running {
        addr,
        stop: Some(stop),
        task,
    }
}
