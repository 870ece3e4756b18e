import json,glob,sys,statistics as st,collections
for tag in sys.argv[1:]:
    groups=collections.defaultdict(list)
    for f in sorted(glob.glob(f'/tmp/s2/bench/{tag}/*.json')):
        try: d=json.load(open(f))
        except Exception as e: print(f, e); continue
        r=d['results'][0] if 'results' in d else d
        groups[f.split('/')[-1].rsplit('_',1)[0]].append(r)
    for k,rs in groups.items():
        us=[r['node_cpu_s_per_msg']*1e6 for r in rs]; ms=[r['msgs_per_s'] for r in rs]
        p50=[r['latency_ms']['p50'] for r in rs]; p99=[r['latency_ms']['p99'] for r in rs]
        print(f"{tag:10} {k:22} n={len(rs)} us/msg med {st.median(us):7.1f} {[round(x,1) for x in us]}  msg/s med {st.median(ms):8.0f} {[round(x) for x in ms]} p50 {st.median(p50):.2f} p99 {st.median(p99):.2f} errs {[r['errors'] for r in rs if r['errors']]}")
