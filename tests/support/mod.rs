#![allow(dead_code)]

pub mod sandbox;
