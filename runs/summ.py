import json,sys
r=json.load(open(sys.argv[1]))
for k in ['seed','duration_s','frr','limits','channels','lab_up_s','warm_up_s','run_s','faults_injected','faults_by_kind','packets_lost_before_first_fault','receiver','unexplained_short_stops','leftovers_after_down']: print(k, r.get(k))
for f in r['faults']: print(' ', f['id'], f['kind'], f['start_s'], f['cleared_s'], 'touched', f['channels_touched'], 'rec', f['recovery_s'], 'lost', f['packets_lost'], f['params'])
d=r['daemon']
for k in ['after_warm_up','baseline','minute_2','end']:
    v=d[k]
    if v: print(k, {x:v.get(x) for x in ['label','at_s','pid','rss_kb','fds','sockets','tunnels','routes','tun_links','lab_namespaces','steady']})
    else: print(k, v)
print('baseline_is', d['baseline_is']); print('rss_growth_pct', d['rss_growth_pct'], 'restarts', d['restarts'])
print('rss series', d['rss_kb_series'])
l=r['log']; print('log', {k:l[k] for k in ['lines','by_level','max_same_cause_per_second','repeated_causes','panics','non_json_lines']})
print('worst per-channel recovery', max((c['max_recovery_s'],n) for n,c in r['per_channel'].items()))
print('failures', len(r['failures']))
for x in r['failures'][:40]: print('  -', x[:300])
