# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Summary of run.sh's outputs (or of the files saved here): held-out, carried / fresh NLL."""
import json
import os
import sys

import numpy as np
D=sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
def heldout(v,s):
    path=f'{D}/wd_{v}_s{s}/metrics.jsonl'
    if not os.path.exists(path): path=f'{D}/metrics_{v}_s{s}.jsonl'
    rows=[json.loads(l) for l in open(path)]
    ev=[r for r in rows if r.get('split')=='eval']
    return ev[-1]['loss'], ev[-1]['step']
def probe(v,s,fresh):
    f=f'{D}/probe_{v}_s{s}{"_fresh" if fresh else ""}.json'
    if not os.path.exists(f): return None
    return json.load(open(f))['rows']
out={}
for v in ['default','ret09']:
    for s in [0,1,2]:
        try:
            h,st=heldout(v,s)
        except Exception: continue
        c,f=probe(v,s,False),probe(v,s,True)
        if not c or not f: continue
        nc=np.array([r['nll'] for r in c]); nf=np.array([r['nll'] for r in f])
        d=nc-nf
        out[(v,s)]=dict(heldout=h, carried=nc[1:].mean(), fresh=nf[1:].mean(), diff=d[1:].mean(), diff_late=d[8:].mean(),
                        drift=c[-1]['block_1/cms/level_1/drift'], first=nc[0])
        print(v,s,st, {k:round(float(x),4) for k,x in out[(v,s)].items()})
for v in ['default','ret09']:
    ks=[k for k in out if k[0]==v]
    if not ks: continue
    for m in ['heldout','carried','fresh','diff','diff_late','drift']:
        a=np.array([out[k][m] for k in ks])
        print(v, m, f"{a.mean():.4f} [{a.min():.4f}, {a.max():.4f}] n={len(a)}")
