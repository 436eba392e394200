"""FedMed's benchmark suite: the only source of FedMed's speed claims (see ``benchmarks/README.md``)."""
