from twisted.application.service import ServiceMaker
etcdd = ServiceMaker("etcdd", "etcdd.tap", "etcd v3 compatible key-value store", "etcdd")
