#![allow(dead_code)]

pub mod harness;
pub mod net;
pub mod sandbox;
pub mod system;
