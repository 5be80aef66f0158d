//! A whole CelebA root: the input is split at its first two NUL bytes into the attribute list,
//! the partition list and the identity list, which `celeba::open` cross-checks.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (attrs, partition, identity) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
    let root = common::scratch().join("celeba");
    std::fs::create_dir_all(root.join("img_align_celeba")).expect("scratch root");
    std::fs::write(root.join("list_attr_celeba.txt"), attrs).expect("write");
    std::fs::write(root.join("list_eval_partition.txt"), partition).expect("write");
    match identity {
        Some(ids) => std::fs::write(root.join("identity_CelebA.txt"), ids).expect("write"),
        None => {
            let _ = std::fs::remove_file(root.join("identity_CelebA.txt"));
        }
    }
    let _ = dmm_data::celeba::open(&root);
});
