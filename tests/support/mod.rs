#![allow(dead_code)]

pub mod harness;
pub mod java;
pub mod net;
pub mod pki;
pub mod sandbox;
pub mod system;
