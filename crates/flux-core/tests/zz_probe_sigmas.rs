//! Temporary probe (deleted after use).
#[test]
fn probe() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/tmp/probe/sigmas.json").unwrap()).unwrap();
    let mut bad = 0; let mut badts = 0;
    for c in v.as_array().unwrap() {
        let cfg = flux_core::sampling::SchedulerConfig { use_dynamic_shifting: c["dyn"].as_bool().unwrap(), shift: c["shift"].as_f64().unwrap(), ..Default::default() };
        let ours = flux_core::sampling::flux_sigmas(c["n"].as_u64().unwrap() as usize, c["s"].as_u64().unwrap() as usize, &cfg).unwrap();
        let r: Vec<u32> = c["sigmas"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let o: Vec<u32> = ours.iter().map(|x| x.to_bits()).collect();
        if o != r { bad += 1; if bad < 5 { println!("{c:?}\n{o:?}"); } }
        let ts: Vec<u32> = c["ts"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let ots: Vec<u32> = ours[..ours.len()-1].iter().map(|&s| flux_core::sampling::transformer_timestep(s, &cfg).to_bits()).collect();
        if ots != ts { badts += 1; }
    }
    println!("bad {bad} badts {badts} of {}", v.as_array().unwrap().len());
    assert_eq!(bad + badts, 0);
}
