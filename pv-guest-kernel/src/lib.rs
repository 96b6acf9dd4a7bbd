//! The PV kernel runtime: what every microvisor guest kernel (dom0 and the domUs) needs to boot
//! from `start_info` and talk to the hypervisor.
#![cfg_attr(not(test), no_std)]
