"""The shared samplers."""

from tsformer.data.samplers import BucketBatchSampler


def test_bucket_batch_sampler_covers_all_items_once_with_similar_lengths():
    lengths = [(i * 37) % 101 for i in range(100)]
    s = BucketBatchSampler(lengths, batch_size=8, pool=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 13
    assert sorted(i for b in batches for i in b) == list(range(100))
    # within a pool of 32 sorted items, a batch spans far less than the full range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches if len(b) == 8]
    assert sum(spans) / len(spans) < 40
    assert list(s) != batches  # a new order every epoch
