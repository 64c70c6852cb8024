fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
    let mut ebpf = aya::EbpfLoader::new().load(obj).expect("load");
    for (name, prog) in ebpf.programs_mut() {
        let tp: &mut aya::programs::TracePoint = prog.try_into().unwrap();
        if let Err(e) = tp.load() { println!("{name}: {e:?}"); std::process::exit(1); }
        println!("loaded {name}");
    }
}
