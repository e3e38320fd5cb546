"""Getting data into a running store: files (`files.import_file`, behind
`sieve import items|users|events FILE`) and a Redis Stream of events
(`stream.StreamConsumer`, behind `sieve consume`)."""
