/* kiln/models.h - ready-made architectures built from the modules of kiln/nn.h: torchvision's
 * ResNet-18/34/50 and He et al.'s CIFAR ResNets (ResNet-20/32/44/56), with their residual
 * blocks (BasicBlock, Bottleneck) as modules of their own.
 *
 *     kiln_resnet_opts o = kiln_resnet_defaults();     // 3 channels, 1000 classes
 *     o.num_classes = 10;
 *     o.small_stem = true;                              // 3x3/1 conv, no max pool: 32x32 images
 *     kiln_module *net = kiln_resnet18(ctx, &o);
 *     kiln_tensor *logits = kiln_forward(net, x);       // x [N, 3, H, W] -> [N, 10]
 *     kiln_module_load(net, "resnet18.safetensors", true, NULL);  // a torchvision state_dict
 *     kiln_module *head = kiln_module_find_child(net, "fc");
 *
 * Names. Children, and so state_dict keys, are torchvision's: conv1, bn1, relu, maxpool
 * (not with small_stem), layer1..layer4 (Sequentials of blocks "0", "1", ...), avgpool, fc;
 * each block has conv1, bn1, conv2, bn2 (Bottleneck: also conv3, bn3), relu, and, where the
 * shape changes, downsample ("downsample.0" a 1x1 convolution of the block's stride,
 * "downsample.1" its batch norm). A state dict saved from torchvision (as safetensors) loads
 * strictly: "layer2.0.downsample.0.weight", "bn1.running_mean", "fc.bias". The CIFAR family
 * has layer1..layer3 and the keys of ResNet20 in shared/bench/torch_ref.py.
 *
 * Initialisation, as torchvision's ResNet: every convolution of a model is drawn from
 * kaiming_normal_(mode="fan_out", nonlinearity="relu"), N(0, 2 / (out_channels * kh * kw));
 * batch norm weight 1, bias 0; the fc layer keeps torch's Linear default. zero_init_residual
 * sets the last batch norm weight of each block to 0 (each block starts as the identity).
 * A block made alone (kiln_nn_basic_block, kiln_nn_bottleneck) keeps the layers' torch
 * defaults, as torchvision's block classes do. Draws come from the context's RNG
 * (kiln_manual_seed before building makes a model reproducible, not equal to torch's).
 *
 * Errors. Constructors return NULL with the context's error set (bad depth, channels or
 * classes). A forward's errors name the innermost layer and its path: an input of 1 channel
 * into a 3-channel model fails with "... [in Conv2d(3, 64, ...) at conv1]".
 */
#ifndef KILN_MODELS_H
#define KILN_MODELS_H

#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_resnet_opts {
    int64_t in_channels;     /* input image channels (3) */
    int64_t num_classes;     /* outputs of fc: 1000 (torchvision family) or 10 (CIFAR family) */
    bool small_stem;         /* torchvision family: conv1 3x3 stride 1 padding 1 and no max pool,
                                for small images (the CIFAR family always has that stem) */
    bool zero_init_residual; /* the last batch norm weight of each block starts at 0 */
} kiln_resnet_opts;

/* torchvision's defaults: 3 channels, 1000 classes, the ImageNet stem (7x7/2 conv, 3x3/2
 * max pool), no zero init. */
KILN_API kiln_resnet_opts kiln_resnet_defaults(void);
/* The CIFAR family's: 3 channels, 10 classes. */
KILN_API kiln_resnet_opts kiln_resnet_cifar_defaults(void);

/* torchvision's resnet18 / resnet34 (BasicBlocks 2-2-2-2 / 3-4-6-3, 64..512 channels) and
 * resnet50 (Bottlenecks 3-4-6-3, out channels 256..2048, stride on the 3x3 conv as
 * torchvision's "v1.5"). NULL o: kiln_resnet_defaults(). [N, in_channels, H, W] ->
 * [N, num_classes]; global average pooling makes any H, W >= 1 work (the ImageNet stem
 * halves them twice, each stage after the first once more). Parameters at 3 channels and
 * 1000 classes: 11,689,512 / 21,797,672 / 25,557,032, as torchvision's. */
KILN_API kiln_module *kiln_resnet18(kiln_ctx *ctx, const kiln_resnet_opts *o);
KILN_API kiln_module *kiln_resnet34(kiln_ctx *ctx, const kiln_resnet_opts *o);
KILN_API kiln_module *kiln_resnet50(kiln_ctx *ctx, const kiln_resnet_opts *o);
/* He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers (20, 32, 44, 56, 110, ...; n >= 1):
 * conv1 3x3 (in_channels -> 16) + bn1 + relu, three stages of n BasicBlocks of 16, 32, 64
 * channels (the 2nd and 3rd start with stride 2 and a 1x1 conv + BN projection shortcut),
 * global average pooling, fc(64, num_classes). NULL o: kiln_resnet_cifar_defaults();
 * small_stem is ignored. ResNet-20 at 1 channel and 10 classes has 272,186 parameters. */
KILN_API kiln_module *kiln_resnet_cifar(kiln_ctx *ctx, int depth, const kiln_resnet_opts *o);

/* torchvision's BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, plus the input itself or,
 * when stride != 1 or in_ch != out_ch, its 1x1-conv(stride)+bn projection (downsample),
 * then relu. [N, in_ch, H, W] -> [N, out_ch, ceil(H/stride), ceil(W/stride)]. */
KILN_API kiln_module *kiln_nn_basic_block(kiln_ctx *ctx, int64_t in_ch, int64_t out_ch, int stride);
/* torchvision's Bottleneck: conv1x1 (in_ch -> width)-bn-relu-conv3x3(stride)-bn-relu-
 * conv1x1 (width -> 4 * width)-bn, plus the input or its projection (when stride != 1 or
 * in_ch != 4 * width), then relu. Out channels: 4 * width. */
KILN_API kiln_module *kiln_nn_bottleneck(kiln_ctx *ctx, int64_t in_ch, int64_t width, int stride);

#ifdef __cplusplus
}
#endif
#endif
