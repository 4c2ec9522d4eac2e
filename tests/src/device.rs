//! A simulated device that behaves like the vendor SDK: it bootstraps over HTTP from its own
//! source address, connects with a PROTOCOL §2 signature, answers a bootstrap notify, and when the
//! broker drops it, bootstraps again and reconnects wherever it is told.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meridian_registry::signature::{SdkShape, sign_connect};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// What a simulated device reports to the test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Connected (CONNACK accepted) to the broker at this address.
    Connected { device: String, broker: SocketAddr },
    /// Received the bootstrap notify and replied.
    Notified { device: String },
    /// Bootstrap or CONNECT was refused; the device will retry.
    Refused { device: String, reason: String },
}

#[derive(Clone, Debug)]
pub struct SimDevice {
    pub product_key: String,
    pub device_name: String,
    pub secret: String,
    /// Source address of its bootstrap requests (the edge geolocates it).
    pub source: IpAddr,
    pub edge: SocketAddr,
}

impl SimDevice {
    /// Asks the edge where to connect: `POST /auth/bootstrap` as the C SDK sends it.
    pub async fn bootstrap(&self) -> Result<SocketAddr, String> {
        let body = format!(
            "productKey={}&deviceName={}&clientId={}.{}&resources=mqtt",
            self.product_key, self.device_name, self.product_key, self.device_name
        );
        let request = format!(
            "POST /auth/bootstrap HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.edge.ip(),
            body.len()
        );
        let response = http_exchange(self.source, self.edge, request.as_bytes()).await?;
        // Read as the vendor C SDK reads it (strict framing, case-sensitive `Content-Length: `,
        // only 200, key search for host and port), so a reply real devices would choke on
        // fails here too.
        let reply = match meridian_edge::sdk::parse(response.as_bytes()) {
            Ok(Some((reply, _))) => reply,
            Ok(None) => return Err(format!("incomplete bootstrap reply: {response:?}")),
            Err(error) => return Err(format!("the SDK cannot read the reply ({error})")),
        };
        let endpoint = reply.endpoint().map_err(|error| format!("bootstrap refused: {error}"))?;
        let (host, port) = (endpoint.host, endpoint.port);
        format!("{host}:{port}").parse().map_err(|e| format!("endpoint: {e}"))
    }

    /// Runs the device forever: bootstrap, connect, answer notifies, reconnect when dropped.
    pub async fn run(self, events: mpsc::UnboundedSender<DeviceEvent>) {
        loop {
            let broker = match self.bootstrap().await {
                Ok(broker) => broker,
                Err(reason) => {
                    let _ = events
                        .send(DeviceEvent::Refused { device: self.device_name.clone(), reason });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.session(broker, &events).await;
            // The SDK backs off briefly before re-bootstrapping.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One MQTT connection until the broker ends it.
    async fn session(&self, broker: SocketAddr, events: &mpsc::UnboundedSender<DeviceEvent>) {
        let signed =
            sign_connect(SdkShape::CSdk, &self.product_key, &self.device_name, &self.secret, None);
        let mut options =
            MqttOptions::new(signed.client_id, broker.ip().to_string(), broker.port());
        options.set_credentials(signed.username, signed.password);
        options.set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let reply_topic =
            format!("/sys/{}/{}/thing/bootstrap/notify_reply", self.product_key, self.device_name);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let device = self.device_name.clone();
                    let _ = events.send(DeviceEvent::Connected { device, broker });
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if publish.topic.ends_with("/thing/bootstrap/notify") =>
                {
                    let id = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let reply = format!(r#"{{"id":"{id}","code":200,"data":{{}}}}"#);
                    let _ = client.try_publish(reply_topic.clone(), QoS::AtMostOnce, false, reply);
                    let _ = events.send(DeviceEvent::Notified { device: self.device_name.clone() });
                }
                Ok(_) => {}
                Err(error) => {
                    if let rumqttc::ConnectionError::ConnectionRefused(code) = error {
                        let reason = format!("CONNACK {code:?}");
                        let _ = events.send(DeviceEvent::Refused {
                            device: self.device_name.clone(),
                            reason,
                        });
                    }
                    return;
                }
            }
        }
    }
}

/// Sends `request` from `source` to `to` and reads the whole response (the request asks for
/// `Connection: close`).
pub async fn http_exchange(
    source: IpAddr,
    to: SocketAddr,
    request: &[u8],
) -> Result<String, String> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket.connect(to).await.map_err(|e| format!("connect {to}: {e}"))?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    String::from_utf8(response).map_err(|e| e.to_string())
}
