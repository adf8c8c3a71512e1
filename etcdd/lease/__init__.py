"""Leases: the lessor core (`lessor.py`, etcd 3.4 `lease/`); persistence lives in the shell."""
