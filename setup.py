from setuptools import find_packages, setup

setup(
    name="etcdd",
    version="0.1.0",
    description="etcd v3 compatible key-value store on Twisted",
    packages=find_packages(include=["etcdd", "etcdd.*", "ops", "ops.*"]) + ["twisted.plugins"],
    package_data={"etcdd.proto": ["*.proto"]},
    # Relative to the install prefix. Man pages go where man(1) looks for a prefix on
    # PATH (/usr/local/share/man, <venv>/share/man). The systemd units are examples
    # to copy (their User= and ExecStart= need the admin's eye), so they go with the
    # docs rather than into <prefix>/lib/systemd/system, which only some prefixes are.
    data_files=[
        ("share/man/man8", ["man/etcdd.8", "man/etcdd-ops.8"]),
        ("share/doc/etcdd/systemd", ["systemd/etcdd.service", "systemd/etcdd@.service",
                                     "systemd/etcdd.env.example",
                                     "systemd/etcdd-instance.env.example"]),
    ],
    python_requires=">=3.11",
    install_requires=[
        "twisted[http2,tls]>=24.3",
        "h2>=4.1",
        "protobuf>=7.35.1,<8",
        "zope.interface>=6",
        "lmdb>=1.4",
        "service-identity>=24.1",
        "crc32c>=2.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "grpcio==1.85.1",
            "grpcio-tools==1.85.1",
            # The real python-etcd3 client for the integration tests; its contended
            # Lock.acquire needs tenacity's pre-7 wait API.
            "etcd3==0.12.0",
            "tenacity>=6.1,<7",
        ],
    },
    entry_points={
        "console_scripts": [
            "etcdd = etcdd.tap:main",
            "etcdd-ops = ops.cli:main",
        ],
    },
)
