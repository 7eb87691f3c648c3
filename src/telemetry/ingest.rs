//! MQTT shell (filled in below).
