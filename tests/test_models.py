"""Tests for ssl_jax.models: ResNet encoders, MLP heads, SwAV prototypes.

Big models are only traced (jax.eval_shape); real forward passes use base widths
4-8 on 16-32 px images so the file runs in about a minute on 2 busy CPU cores.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl_jax.models import heads
from ssl_jax.models import resnet
from ssl_jax.models.heads import MLPHead, Prototypes, normalize_prototypes
from ssl_jax.models.resnet import ResNet
from ssl_jax.parallel import BATCH_AXIS, make_mesh

DEPTHS = (10, 18, 34, 50, 101, 152, 200)

# torchvision's published totals (docs' "num_params") minus the 1000-way classifier:
# fc = 512*1000+1000 for basic-block nets, 2048*1000+1000 for bottleneck nets.
TORCHVISION_TOTALS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}
# Parameter counts reported (rounded to millions) in the SimCLR paper (R50 2x/4x
# in its width study) and the BYOL paper (ResNet-200 2x).
PAPER_MILLIONS = {(50, 2): 94, (50, 4): 375, (200, 2): 250}


def _fc_params(depth):
  return (512 if depth < 50 else 2048) * 1000 + 1000


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _abstract_init(depth, width_multiplier, stem, norm='batch'):
  """(output ShapeDtypeStruct, variables shapes) of a full-size model, traced only.

  32x32 inputs keep tracing cheap; the params do not depend on the image size.
  """
  model = ResNet(depth=depth, width_multiplier=width_multiplier, stem=stem, norm=norm)
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.float32), train=False))


def _images(seed, shape):
  """Standard-normal float32 test inputs (numpy: no per-shape PRNG compilation)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# Eager flax init/apply dispatches op by op and compiles each op; the threefry PRNG
# makes a jitted init compile for ~15 s per ResNet on 2 CPU cores. So every real
# init/forward here is jitted, with flags static, and inits use 'rbg' keys (~10x
# faster to compile; the tests do not depend on which PRNG draws the weights).
def _init(module, x, seed=0, **kwargs):
  key = jax.random.key(seed, impl='rbg')
  return jax.jit(functools.partial(module.init, **kwargs))(key, x)


def _apply(module, variables, x, **kwargs):
  return jax.jit(functools.partial(module.apply, **kwargs))(variables, x)


# --------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize('stem', resnet.STEMS)
@pytest.mark.parametrize('depth', DEPTHS)
@pytest.mark.parametrize('width_multiplier', (1, 2, 4))
def test_output_shape_every_depth_stem_width(depth, width_multiplier, stem):
  out, variables = _abstract_init(depth, width_multiplier, stem)
  expected = (512 if depth < 50 else 2048) * width_multiplier
  assert out.shape == (2, expected)
  assert out.dtype == jnp.float32
  assert resnet.num_features(depth, width_multiplier) == expected
  assert ResNet(depth=depth, width_multiplier=width_multiplier).num_features == expected
  assert set(variables) == {'params', 'batch_stats'}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize('depth', sorted(TORCHVISION_TOTALS))
def test_param_count_matches_torchvision_without_fc(depth):
  _, variables = _abstract_init(depth, 1, 'imagenet')
  assert _count(variables['params']) == TORCHVISION_TOTALS[depth] - _fc_params(depth)


def test_resnet10_is_resnet18_with_one_block_per_stage():
  """No published total for ResNet-10: it is ResNet-18 less one identity block per
  stage, i.e. two 3x3 c->c convs and two BNs (scale, bias) at c = 64 ... 512."""
  block = {c: 2 * 3 * 3 * c * c + 2 * 2 * c for c in (64, 128, 256, 512)}
  resnet10 = _count(_abstract_init(10, 1, 'imagenet')[1]['params'])
  assert resnet10 == TORCHVISION_TOTALS[18] - _fc_params(18) - sum(block.values())
  assert resnet.STAGE_SIZES[10] == (1, 1, 1, 1)


def test_param_counts_match_papers_and_scale_with_width():
  for (depth, width), millions in PAPER_MILLIONS.items():
    _, variables = _abstract_init(depth, width, 'imagenet')
    assert round(_count(variables['params']) / 1e6) == millions, (depth, width)
  # The CIFAR stem swaps the 7x7x3 stem kernel for a 3x3x3 one.
  for depth in DEPTHS:
    imagenet = _count(_abstract_init(depth, 1, 'imagenet')[1]['params'])
    cifar = _count(_abstract_init(depth, 1, 'cifar')[1]['params'])
    assert imagenet - cifar == 64 * 3 * (7 * 7 - 3 * 3)


def test_group_ws_has_same_params_and_no_batch_stats():
  out, variables = _abstract_init(50, 1, 'imagenet', 'group_ws')
  assert set(variables) == {'params'}
  assert out.shape == (2, 2048)
  # GN has the same scale/bias params as BN, so the count is unchanged.
  assert _count(variables['params']) == TORCHVISION_TOTALS[50] - _fc_params(50)


@pytest.mark.parametrize('kwargs, valid', [
    (dict(depth=42), '[10, 18, 34, 50, 101, 152, 200]'),
    (dict(stem='tiny'), "('imagenet', 'cifar')"),
    (dict(norm='instance'), "('batch', 'group_ws', 'layer')"),
    (dict(width_multiplier=0), 'positive integer'),
])
def test_invalid_fields_raise_naming_valid_values(kwargs, valid):
  with pytest.raises(ValueError) as err:
    ResNet(**kwargs)
  assert valid in str(err.value)


def test_bad_inputs_raise():
  model = ResNet(depth=18, base_width=4, stem='cifar')
  with pytest.raises(ValueError, match='float'):
    model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3), jnp.uint8), train=False)
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    model.init(jax.random.key(0), jnp.zeros((8, 8, 3)), train=False)


def test_stage_strides_and_v15_stride_on_3x3():
  """Bottleneck stride sits on the 3x3 conv (v1.5); projections only where shapes change."""
  _, variables = _abstract_init(50, 1, 'imagenet')
  params = variables['params']
  assert params['stem_conv']['kernel'].shape == (7, 7, 3, 64)
  first = params['stage2_block1']
  assert first['conv1']['kernel'].shape == (1, 1, 256, 128)
  assert first['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert first['proj_conv']['kernel'].shape == (1, 1, 256, 512)
  assert 'proj_conv' in params['stage1_block1']  # 64 -> 256 channels
  assert 'proj_conv' not in params['stage1_block2']
  # Stride location shows in the shapes of a real (tiny) forward: trace the
  # 3x3 conv's input spatial size via capture_intermediates.
  tiny = ResNet(depth=50, base_width=4, stem='cifar')
  x = jnp.zeros((1, 16, 16, 3))
  variables = jax.eval_shape(functools.partial(tiny.init, train=False), jax.random.key(0), x)
  _, state = jax.eval_shape(
      functools.partial(tiny.apply, train=False, capture_intermediates=True,
                        mutable=['intermediates']), variables, x)
  inter = state['intermediates']['stage2_block1']
  assert inter['conv1']['__call__'][0].shape == (1, 16, 16, 8)  # 1x1: no stride
  assert inter['conv2']['__call__'][0].shape == (1, 8, 8, 8)  # 3x3: stride 2


def _tiny(**kwargs):
  defaults = dict(depth=18, base_width=4, stem='cifar')
  return ResNet(**{**defaults, **kwargs})


def test_forward_train_eval_and_bn_momentum():
  model = _tiny()
  x = _images(0, (4, 16, 16, 3))
  variables = _init(model, x, seed=1, train=False)
  eval_features = _apply(model, variables, x, train=False)
  train_features, state = _apply(model, variables, x, train=True, capture_intermediates=True,
                                 mutable=['batch_stats', 'intermediates'])
  assert eval_features.shape == train_features.shape == (4, 32)
  assert np.all(np.isfinite(train_features)) and np.all(np.isfinite(eval_features))
  assert not np.allclose(eval_features, train_features)  # batch vs running statistics
  # flax momentum 0.9 == torch 0.1: running = 0.9 * running + 0.1 * batch statistic.
  stem_out = np.asarray(state['intermediates']['stem_conv']['__call__'][0], np.float64)
  stats = state['batch_stats']['stem_norm']
  np.testing.assert_allclose(stats['mean'], 0.1 * stem_out.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  assert set(state['batch_stats']) == set(variables['batch_stats'])


def test_group_ws_forward_train_without_mutable():
  model = _tiny(norm='group_ws', base_width=8)
  x = _images(2, (4, 16, 16, 3))
  variables = _init(model, x, seed=3, train=True)
  assert set(variables) == {'params'}
  train_features = _apply(model, variables, x, train=True)  # no mutable needed
  eval_features = _apply(model, variables, x, train=False)
  assert train_features.shape == (4, 64)
  assert np.all(np.isfinite(train_features))
  np.testing.assert_array_equal(train_features, eval_features)
  # No cross-example statistics: an example's features do not depend on the batch.
  np.testing.assert_allclose(_apply(model, variables, x[:1], train=True), train_features[:1],
                             rtol=1e-5, atol=1e-6)
  assert resnet.group_norm_groups(64) == 32
  assert resnet.group_norm_groups(2048) == 32
  assert resnet.group_norm_groups(8) == 8
  assert resnet.group_norm_groups(48) == 24


def test_group_norm_layers_use_expected_groups():
  """GroupNorm of a 64-channel layer normalises each group of 2 channels, checked in numpy."""
  x = np.asarray(_images(4, (2, 3, 3, 64)), np.float64)
  y = resnet.GroupNorm(epsilon=1e-5).apply({'params': {'scale': jnp.ones(64),
                                                       'bias': jnp.zeros(64)}},
                                           jnp.asarray(x, jnp.float32))
  groups = x.reshape(2, 3, 3, 32, 2)
  mean = groups.mean(axis=(1, 2, 4), keepdims=True)
  var = groups.var(axis=(1, 2, 4), keepdims=True)
  expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_weight_standardization_numpy_float64():
  kernel = np.asarray(_images(5, (3, 3, 5, 7)) * 0.3 + 0.1, np.float32)
  standardized = np.asarray(resnet.standardize_weight(jnp.asarray(kernel)), np.float64)
  fan_in = standardized.reshape(-1, 7)  # (h * w * in, out)
  np.testing.assert_allclose(fan_in.mean(axis=0), 0.0, atol=1e-6)
  np.testing.assert_allclose(fan_in.var(axis=0), 1.0, rtol=1e-5)
  # Independent float64 re-derivation of (w - mean) / sqrt(var + eps) per output filter.
  k64 = kernel.astype(np.float64).reshape(-1, 7)
  ref = (k64 - k64.mean(0)) / np.sqrt(k64.var(0) + resnet.WS_EPSILON)
  np.testing.assert_allclose(fan_in, ref, rtol=1e-5, atol=1e-6)

  # The conv stores the raw kernel and convolves with the standardised one.
  conv = resnet.StandardizedConv(7, (3, 3), padding=1, use_bias=False)
  x = _images(6, (2, 6, 6, 5))
  raw = {'params': {'kernel': jnp.asarray(kernel)}}
  expected = jax.lax.conv_general_dilated(
      x, jnp.asarray(ref.reshape(kernel.shape), jnp.float32), (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv.apply(raw, x), expected, rtol=1e-4, atol=1e-4)
  # Scale invariance: a rescaled raw kernel gives the same output.
  scaled = {'params': {'kernel': jnp.asarray(kernel) * 5.0}}
  np.testing.assert_allclose(conv.apply(scaled, x), expected, rtol=1e-4, atol=1e-4)


def test_cross_replica_batchnorm_matches_single_device(devices):
  """8 devices x 2 examples with axis_name == one device with the 16-example batch."""
  mesh = make_mesh()
  x = _images(7, (16, 16, 16, 3))
  single = _tiny()
  sharded = _tiny(axis_name=BATCH_AXIS)
  variables = _init(single, x, seed=8, train=False)

  features, updates = _apply(single, variables, x, train=True, mutable=['batch_stats'])

  def per_device(model, variables, x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  def run(model, out_stats_spec):
    fn = jax.jit(jax.shard_map(
        functools.partial(per_device, model), mesh=mesh,
        in_specs=(P(), P(BATCH_AXIS)), out_specs=(P(BATCH_AXIS), out_stats_spec)))
    return fn(variables, x)

  dist_features, dist_updates = run(sharded, P())
  np.testing.assert_allclose(dist_features, features, rtol=1e-4, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               dist_updates, updates)

  # Control: without axis_name each device normalises its 2 examples alone.
  local_features, _ = jax.jit(jax.shard_map(
      functools.partial(per_device, single), mesh=mesh, in_specs=(P(), P(BATCH_AXIS)),
      out_specs=(P(BATCH_AXIS), P(BATCH_AXIS)), check_vma=False))(variables, x)
  assert not np.allclose(local_features, features, rtol=1e-3, atol=1e-3)


def _last_norm_name(block_params):
  return 'norm3' if 'norm3' in block_params else 'norm2'


@pytest.mark.parametrize('depth, norm, zero_init', [
    (18, 'batch', True), (50, 'batch', True), (18, 'group_ws', True), (50, 'group_ws', True),
    (18, 'batch', False),  # control: without the flag every norm scale starts at one
])
def test_zero_init_residual_scales(depth, norm, zero_init):
  model = _tiny(depth=depth, norm=norm, zero_init_residual=zero_init)
  params = _init(model, jnp.zeros((1, 16, 16, 3)), seed=9, train=False)['params']
  blocks = [name for name in params if name.startswith('stage')]
  assert len(blocks) == sum(resnet.STAGE_SIZES[depth])
  for name in blocks:
    block = params[name]
    last = _last_norm_name(block)
    for norm_name in [k for k in block if 'norm' in k]:
      scale = np.asarray(block[norm_name]['scale'])
      expected = 0.0 if (zero_init and norm_name == last) else 1.0
      np.testing.assert_array_equal(scale, expected, err_msg=f'{name}/{norm_name}')
  np.testing.assert_array_equal(params['stem_norm']['scale'], 1.0)


def test_zero_init_blocks_equal_their_shortcut_numpy():
  """With a zero last-norm scale a block is relu(shortcut(x)), checked in float64 numpy."""
  norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9,
                           epsilon=1e-5)
  conv = functools.partial(nn.Conv, use_bias=False)
  x = _images(10, (4, 8, 8, 16))

  # Identity shortcut: the block returns relu(x).
  identity = resnet.BottleneckBlock(filters=4, conv=conv, norm=norm, zero_init_last=True)
  variables = _init(identity, x, seed=11)
  y, _ = _apply(identity, variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, np.maximum(np.asarray(x), 0.0), rtol=1e-6, atol=1e-6)

  # Projection shortcut (stride 2, 16 -> 32 channels): relu(BN(1x1 strided conv(x))).
  for block_cls, filters in ((resnet.BasicBlock, 32), (resnet.BottleneckBlock, 8)):
    block = block_cls(filters=filters, conv=conv, norm=norm, strides=2, zero_init_last=True)
    variables = _init(block, x, seed=12)
    y, _ = _apply(block, variables, x, mutable=['batch_stats'])
    kernel = np.asarray(variables['params']['proj_conv']['kernel'], np.float64)[0, 0]
    h = np.asarray(x, np.float64)[:, ::2, ::2, :] @ kernel
    h = (h - h.mean(axis=(0, 1, 2))) / np.sqrt(h.var(axis=(0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y, np.maximum(h, 0.0), rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_float32_params_and_output():
  x = _images(13, (8, 32, 32, 3))
  model_32 = _tiny(base_width=8)
  model_16 = _tiny(base_width=8, dtype=jnp.bfloat16)
  variables = _init(model_32, x, seed=14, train=False)
  variables_16 = _init(model_16, x, seed=14, train=False)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables_16))
  jax.tree.map(np.testing.assert_array_equal, variables_16, variables)

  apply = lambda m: jax.jit(functools.partial(m.apply, train=True, mutable=['batch_stats']))
  f32, _ = apply(model_32)(variables, x)
  bf16, stats_16 = apply(model_16)(variables, x)
  assert bf16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(stats_16))
  assert np.all(np.isfinite(bf16))
  rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
  # bf16 has an 8-bit mantissa (eps 2^-8 ~ 4e-3): errors of that order, accumulated
  # over ~20 layers, but never float32-exact.
  assert 1e-4 < rel < 5e-2, rel
  # The convolutions really run in bfloat16.
  jaxpr = jax.make_jaxpr(functools.partial(model_16.apply, train=False))(variables, x)
  conv_lines = [line for line in str(jaxpr).splitlines() if 'conv_general_dilated[' in line]
  assert len(conv_lines) == 1 + 2 * 8 + 3  # stem + 2 per basic block + 3 projections
  for line in conv_lines:
    assert 'bf16[' in line.split('=')[0], line  # the conv's output type


def test_remat_same_params_outputs_and_gradients():
  x = _images(15, (4, 16, 16, 3))
  plain, remat = _tiny(base_width=4), _tiny(base_width=4, remat=True)
  variables = _init(plain, x, seed=16, train=False)
  jax.tree.map(np.testing.assert_array_equal, _init(remat, x, seed=16, train=False), variables)

  def loss(model, params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.sum(jnp.square(out))

  grads = [jax.jit(jax.value_and_grad(functools.partial(loss, m)))(variables['params'])
           for m in (plain, remat)]
  np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               grads[1][1], grads[0][1])
  # The blocks really are rematerialised: the backward pass recomputes convolutions.
  jaxpr = str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(variables['params']))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr


# --------------------------------------------------------------------------- heads


def _batchnorm_np(h, eps=1e-5):
  return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + eps)


def test_mlp_head_matches_numpy_float64():
  head = MLPHead(hidden_dims=(32, 24), output_dim=8, use_bn=True, last_bn=True)
  x = _images(15, (16, 12))
  variables = _init(head, x, seed=16, train=True)
  y, _ = _apply(head, variables, x, train=True, mutable=['batch_stats'])
  assert y.shape == (16, 8) and y.dtype == jnp.float32
  y_eager, _ = head.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_eager, rtol=1e-5, atol=1e-5)  # jit == no jit

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  h = np.asarray(x, np.float64)
  for i in range(2):
    h = h @ p[f'hidden_{i}']['kernel'] + p[f'hidden_{i}']['bias']
    h = _batchnorm_np(h) * p[f'hidden_bn_{i}']['scale'] + p[f'hidden_bn_{i}']['bias']
    h = np.maximum(h, 0.0)
  h = _batchnorm_np(h @ p['output']['kernel']) * p['output_bn']['scale']
  np.testing.assert_allclose(y, h, rtol=1e-4, atol=1e-4)


def test_mlp_head_layers_and_bn_presence():
  x = jnp.zeros((4, 16))
  head = MLPHead(hidden_dims=(8,), output_dim=4, use_bn=False)
  variables = jax.eval_shape(functools.partial(head.init, train=False), jax.random.key(0), x)
  assert set(variables) == {'params'}
  assert set(variables['params']) == {'hidden_0', 'output'}
  assert 'bias' in variables['params']['hidden_0']
  assert 'bias' not in variables['params']['output']

  no_scale = MLPHead(hidden_dims=(), output_dim=4, last_bn=True, last_bn_scale=False,
                     output_bias=True)
  variables = jax.eval_shape(functools.partial(no_scale.init, train=False),
                             jax.random.key(0), x)
  assert 'output_bn' not in variables['params']  # no affine params at all
  assert set(variables['batch_stats']['output_bn']) == {'mean', 'var'}
  assert 'bias' in variables['params']['output']

  with pytest.raises(ValueError, match='positive'):
    MLPHead(hidden_dims=(0,), output_dim=4)
  with pytest.raises(ValueError, match=r'\[B, D\]'):
    MLPHead(hidden_dims=(), output_dim=4).init(jax.random.key(0), jnp.zeros((2, 3, 4)),
                                              train=False)


@pytest.mark.parametrize('make, in_dim, hidden, out_dim, hidden_bias, last_bn', [
    (heads.simclr_v1_projector, 2048, (2048,), 128, False, True),
    (heads.simclr_v2_projector, 2048, (2048, 2048), 128, False, True),
    (heads.byol_projector, 2048, (4096,), 256, True, False),
    (heads.byol_predictor, 256, (4096,), 256, True, False),
])
def test_paper_heads(make, in_dim, hidden, out_dim, hidden_bias, last_bn):
  head = make()
  out, variables = jax.eval_shape(lambda: head.init_with_output(
      jax.random.key(0), jnp.zeros((2, in_dim)), train=True))
  assert out.shape == (2, out_dim) and out.dtype == jnp.float32
  params, stats = variables['params'], variables['batch_stats']
  assert tuple(params[f'hidden_{i}']['kernel'].shape[1] for i in range(len(hidden))) == hidden
  for i in range(len(hidden)):
    assert ('bias' in params[f'hidden_{i}']) == hidden_bias
    assert set(params[f'hidden_bn_{i}']) == {'scale', 'bias'}
    assert f'hidden_bn_{i}' in stats
  assert set(params['output']) == {'kernel'}
  assert params['output']['kernel'].shape == (hidden[-1], out_dim)
  if last_bn:  # SimCLR: BN on the output with a scale and no centre.
    assert set(params['output_bn']) == {'scale'}
    assert 'output_bn' in stats
  else:
    assert 'output_bn' not in params and 'output_bn' not in stats


def test_prototypes_and_normalization_numpy():
  x = _images(17, (6, 10)) * 3.0
  protos = Prototypes(num_prototypes=7)
  variables = _init(protos, x, seed=18)
  assert set(variables) == {'params'}
  assert variables['params']['kernel'].shape == (10, 7)
  assert 'bias' not in variables['params']

  normalized = normalize_prototypes(variables['params'])
  assert jax.tree.structure(normalized) == jax.tree.structure(variables['params'])
  raw = np.asarray(variables['params']['kernel'], np.float64)
  unit = np.asarray(normalized['kernel'], np.float64)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=0), 1.0, rtol=1e-6)
  np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=0), rtol=1e-5, atol=1e-7)
  # Idempotent, and it normalises columns (prototypes), not rows.
  np.testing.assert_allclose(normalize_prototypes(normalized)['kernel'], unit, rtol=1e-6)
  assert not np.allclose(np.linalg.norm(unit, axis=1), 1.0)

  scores = _apply(protos, {'params': normalized}, x)
  x64 = np.asarray(x, np.float64)
  cosines = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)) @ unit
  assert scores.shape == (6, 7)
  np.testing.assert_allclose(scores, cosines, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(scores) <= 1.0 + 1e-6)

  with pytest.raises(ValueError, match=r'\[D, K\]'):
    normalize_prototypes({'kernel': jnp.ones((3, 3, 2, 4))})


@pytest.mark.parametrize('make, in_dim, hidden, out_dim, hidden_bias, out_bias, norm, out_norm', [
    # (constructor, input width, hidden widths, output width, hidden Linear bias,
    #  output Linear bias, hidden norm, output BN: None | 'no_affine')
    (heads.simsiam_projector, 2048, (2048, 2048), 2048, False, False, 'bn', 'no_affine'),
    (heads.simsiam_predictor, 2048, (512,), 2048, False, True, 'bn', None),
    (heads.mocov2_projector, 2048, (2048,), 128, True, True, None, None),
    (heads.mocov3_projector, 2048, (4096, 4096), 256, False, False, 'bn', 'no_affine'),
    (heads.mocov3_predictor, 256, (4096,), 256, False, False, 'bn', None),
    (functools.partial(heads.byol_projector, norm='layer'), 2048, (4096,), 256, True, False,
     'ln', None),
])
def test_simsiam_moco_and_layernorm_byol_heads(make, in_dim, hidden, out_dim, hidden_bias,
                                               out_bias, norm, out_norm):
  head = make()
  out, variables = jax.eval_shape(lambda: head.init_with_output(
      jax.random.key(0), jnp.zeros((2, in_dim)), train=True))
  assert out.shape == (2, out_dim)
  params, stats = variables['params'], variables.get('batch_stats', {})
  assert tuple(params[f'hidden_{i}']['kernel'].shape[1] for i in range(len(hidden))) == hidden
  for i in range(len(hidden)):
    assert ('bias' in params[f'hidden_{i}']) == hidden_bias
    assert (f'hidden_bn_{i}' in params) == (norm == 'bn') == (f'hidden_bn_{i}' in stats)
    assert (f'hidden_ln_{i}' in params) == (norm == 'ln')
  assert ('bias' in params['output']) == out_bias
  assert params['output']['kernel'].shape == (hidden[-1], out_dim)
  assert 'output_bn' not in params  # no affine output BN anywhere here
  assert ('output_bn' in stats) == (out_norm == 'no_affine')
  if norm != 'bn' and out_norm is None:
    assert not jax.tree.leaves(stats)  # no batch statistics at all


def test_layernorm_head_matches_numpy_float64():
  head = heads.byol_projector(12, 6, norm='layer')
  x = _images(19, (5, 10))
  variables = _init(head, x, seed=20, train=False)
  assert set(variables) == {'params'}
  y = head.apply(variables, x, train=True)  # no mutable collection needed
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  h = np.asarray(x, np.float64) @ p['hidden_0']['kernel'] + p['hidden_0']['bias']
  h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  h = np.maximum(h * p['hidden_ln_0']['scale'] + p['hidden_ln_0']['bias'], 0.0)
  np.testing.assert_allclose(y, h @ p['output']['kernel'], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='norm'):
    MLPHead(hidden_dims=(4,), output_dim=2, norm='group')
