"""The ViT paper's analyses of what the model learned (Figures 6 and 7), computed from its weights and attention maps.

Dosovitskiy et al. 2020, arXiv:2010.11929, Section 4.5 "Inspecting Vision Transformer" and Appendix D.7-D.8:

    Figure 6      attention_rollout, draw_rollout                      where the class token looks, all layers
    Figure 7 L    embedding_filters, draw_filters                      principal components of the patch filters E
    Figure 7 C    position_embedding_similarity, draw_position_similarity   the 2D grid E_pos has learned
    Figure 7 R    mean_attention_distance, draw_attention_distance     how far each head looks, layer by layer
                  draw_head_maps                                       the class token's attention, head by head

`attentions` everywhere is a list with one (B, heads, 1+N, 1+N) tensor of softmax weights per layer, first layer
first, class token first (row: query, column: key), as `ViT.forward_features(images, attention_maps=list)` fills it.
The N patches form a square grid in row-major order, as Eq. 1 flattens them. The analyses return tensors; the
drawing functions return PIL images or matplotlib Figures (Agg canvas, no pyplot: no global backend is switched).

views.py draws them for one photo, as the page shows them and as `python views.py` saves them.
"""

import math
import numbers

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from images import attention_overlay


def _checked_attentions(attentions) -> list[torch.Tensor]:
    """The per-layer attention maps, all one (B, heads, 1+N, 1+N) shape, in at least float32."""
    if isinstance(attentions, torch.Tensor) or not len(attentions):
        raise ValueError("attentions must be a non-empty list with one (B, heads, 1+N, 1+N) tensor per layer")
    shape = tuple(attentions[0].shape)
    for layer, attention in enumerate(attentions):
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2] or attention.shape[-1] < 2:
            raise ValueError(f"layer {layer}'s attention has shape {tuple(attention.shape)}, not (B, heads, 1+N, 1+N)")
        if tuple(attention.shape) != shape:
            raise ValueError(f"layer {layer}'s attention has shape {tuple(attention.shape)}, layer 0's {shape}")
    dtype = torch.promote_types(attentions[0].dtype, torch.float32)
    return [attention.detach().to(dtype) for attention in attentions]


def _grid_size(num_patches: int) -> int:
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(
            f"{num_patches} patches do not form a square grid; expected a square number such as 196 (14x14)"
        )
    return grid


def attention_rollout(attentions) -> torch.Tensor:
    """Figure 6 and Appendix D.8: attention rollout (Abnar and Zuidema 2020), shape (B, N).

    Each layer's attention is averaged over its heads, and the residual connection of Eq. 2 is accounted for by
    mixing in the identity: Â_l = 0.5 A_l + 0.5 I. The rollout Â_L ... Â_1 multiplies them from the first layer
    to the last, and its class-token row (with the class token's own column dropped) says how much of each input
    patch reaches the class token that Eq. 4 classifies. No renormalisation: softmax rows sum to 1, so every Â_l
    and their product are row-stochastic already; the N weights returned sum to 1 minus the share the class token
    keeps of its own input embedding. The drawing functions rescale for display."""
    layers = _checked_attentions(attentions)
    batch, _, tokens, _ = layers[0].shape
    identity = torch.eye(tokens, dtype=layers[0].dtype, device=layers[0].device)
    rollout = identity.expand(batch, tokens, tokens)
    for attention in layers:
        residual_attention = 0.5 * attention.mean(dim=1) + 0.5 * identity
        rollout = residual_attention @ rollout
    return rollout[:, 0, 1:]


def patch_centre_distances(grid_size: int, patch_size: float) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the centres of the patches of a grid_size x grid_size grid,
    patches numbered row by row (Eq. 1)."""
    index = torch.arange(grid_size * grid_size)
    centres = (torch.stack([index // grid_size, index % grid_size], dim=1).double() + 0.5) * patch_size  # (N, 2): y, x
    return (centres[:, None] - centres[None]).norm(dim=-1)


def mean_attention_distance(attentions, patch_size: float) -> torch.Tensor:
    """Figure 7 (right) and Appendix D.7: for every layer and head, the distance in pixels across which the head
    integrates information, shape (layers, heads).

    For each query patch, the distance from its centre to every key patch's centre is weighted by the attention
    weight, summed, then averaged over query patches and images. The class token is left out as a query and as a
    key, and each query's patch-to-patch weights are renormalised to sum to 1: the class token has no place in the
    image, so it has no distance to weight (D.7 measures distances between image positions), and without the
    renormalisation a head that sends most of its weight to the class token would read as a local head. A query
    whose weights on the patches all underflow to 0 counts as 0 pixels (softmax does not give exact zeros).
    The paper averages pixel to pixel; patch centres are the patch-level reading of the same distance (a head
    attending only to its own patch measures 0 here, about half a patch width pixel by pixel)."""
    if not isinstance(patch_size, numbers.Real) or isinstance(patch_size, bool) or not patch_size > 0:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size!r}")
    layers = _checked_attentions(attentions)
    grid = _grid_size(layers[0].shape[-1] - 1)
    distances = patch_centre_distances(grid, patch_size).to(layers[0].dtype).to(layers[0].device)
    per_layer = []
    for attention in layers:
        patch_to_patch = attention[:, :, 1:, 1:]
        total = patch_to_patch.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(attention.dtype).tiny)
        per_query = (patch_to_patch / total * distances).sum(dim=-1)  # (B, heads, N)
        per_layer.append(per_query.mean(dim=(0, 2)))
    return torch.stack(per_layer)


def position_embedding_similarity(position_embedding: torch.Tensor) -> torch.Tensor:
    """Figure 7 (centre): cosine similarity between the learned position embeddings of every pair of patches,
    shape (N, N). Takes model.py's (1, 1+N, D) parameter or a (1+N, D) tensor; the class token's entry (first)
    has no place in the grid and is dropped."""
    embedding = position_embedding.detach()
    if embedding.ndim == 3 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.ndim != 2 or embedding.shape[0] < 2:
        raise ValueError(
            "position_embedding must be (1, 1+N, D) or (1+N, D) with the class token first, "
            f"got {tuple(position_embedding.shape)}"
        )
    patches = F.normalize(embedding[1:].to(torch.promote_types(embedding.dtype, torch.float32)), dim=-1)
    return patches @ patches.T


def embedding_filters(projection_weight: torch.Tensor, k: int = 28) -> torch.Tensor:
    """Figure 7 (left): the first k principal components of the patch-embedding filters E, shape (k, C, P, P).

    The projection's Conv2d weight (D, C, P, P) holds D filters, each a point in C*P*P pixel space; they are
    centred and their covariance's eigenvectors taken, ordered by the variance they explain. k is clamped to
    the min(D, C*P*P) components that exist. A principal component's sign is arbitrary; each is flipped so that its
    largest-magnitude entry is positive, which makes the output the same for the same filters."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer number of components, got {k!r}")
    if projection_weight.ndim != 4:
        raise ValueError(
            f"projection_weight must be a Conv2d weight (D, C, P, P), got {tuple(projection_weight.shape)}"
        )
    filters = projection_weight.detach().flatten(1).double()  # (D, C*P*P)
    centred = filters - filters.mean(dim=0)
    # the eigenvectors of the filters' covariance (an SVD of the filters gives the same, many times slower here)
    _, directions = torch.linalg.eigh(centred.T @ centred)  # ascending variance, one direction a column
    components = directions.flip(-1).T[: min(k, filters.shape[0], filters.shape[1])]
    largest = components.abs().argmax(dim=1, keepdim=True)
    components = components * components.gather(1, largest).sign()
    dtype = torch.promote_types(projection_weight.dtype, torch.float32)
    return components.reshape(-1, *projection_weight.shape[1:]).to(dtype)


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def draw_rollout(image: Image.Image, rollout_row: torch.Tensor) -> Image.Image:
    """Figure 6: the image masked by the class token's rollout, (N,) weights from attention_rollout. The map is
    scaled so that its largest weight keeps the pixels as they are, upsampled bilinearly to the image, and
    multiplied in: the image shows through where the model looked. image: the picture the model saw (the
    centre crop, not the uploaded photo); the result has its size."""
    if rollout_row.ndim != 1:
        raise ValueError(f"rollout_row must be one image's (N,) weights, got shape {tuple(rollout_row.shape)}")
    weights = rollout_row.detach().double().cpu().clamp_min(0)
    grid = _grid_size(weights.numel())
    mask = (weights / weights.max().clamp_min(1e-12)).reshape(grid, grid).numpy().astype(np.float32)
    mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.Resampling.BILINEAR)).clip(0, 1)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * mask[..., None]
    return Image.fromarray(pixels.round().astype(np.uint8))


def _tile(images: list[Image.Image], columns: int, gap: int) -> Image.Image:
    """Equal-sized images in a grid, row by row, on white."""
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for index, picture in enumerate(images):
        row, column = divmod(index, columns)
        sheet.paste(picture, (column * (width + gap), row * (height + gap)))
    return sheet


def draw_filters(components: torch.Tensor, columns: int = 7, scale: int = 4, gap: int = 4) -> Image.Image:
    """Figure 7 (left): the principal components of the embedding filters as RGB tiles, 28 of them in a 4x7
    grid, row by row in order of explained variance. Each tile is rescaled to [0, 1] on its own (a component's
    scale and sign carry no meaning) and enlarged `scale` times with nearest-neighbour pixels."""
    if components.ndim != 4 or components.shape[1] not in (1, 3) or not len(components):
        raise ValueError(f"components must be (k, C, P, P) with C 1 or 3, got {tuple(components.shape)}")
    tiles = []
    for component in components.detach().double().cpu():
        low, high = component.min(), component.max()
        pixels = ((component - low) / (high - low).clamp_min(1e-12) * 255).round().byte()
        array = pixels.permute(1, 2, 0).numpy()
        tile = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        tiles.append(tile.convert("RGB").resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST))
    return _tile(tiles, min(columns, len(tiles)), gap)


def similarity_mosaic(similarity: torch.Tensor, gap: int = 1) -> np.ndarray:
    """The (N, N) similarities as one grid of grids: the small map at (row, column) is the similarity of the patch
    at (row, column) to every patch, in its place on the grid; NaN fills the gaps between maps."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got shape {tuple(similarity.shape)}")
    grid = _grid_size(similarity.shape[0])
    cell = grid + gap
    maps = similarity.detach().double().cpu().numpy().reshape(grid, grid, grid, grid)  # query row, col, key row, col
    padded = np.full((grid, grid, cell, cell), np.nan)
    padded[:, :, :grid, :grid] = maps
    mosaic = padded.transpose(0, 2, 1, 3).reshape(grid * cell, grid * cell)
    return mosaic[: grid * cell - gap, : grid * cell - gap]


def draw_position_similarity(similarity: torch.Tensor) -> Figure:
    """Figure 7 (centre): for each input patch, a small map of its position embedding's cosine similarity to every
    patch's, placed at the patch's row and column. One image (`similarity_mosaic`), not N subplots."""
    mosaic = similarity_mosaic(similarity)
    grid = _grid_size(similarity.shape[0])
    figure = _figure(6.0, 5.2)
    axes = figure.add_subplot()
    shown = axes.imshow(
        mosaic,
        cmap=matplotlib.colormaps["viridis"].with_extremes(bad="white"),
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    centres = np.arange(grid) * (grid + 1) + (grid - 1) / 2
    labels = [str(index + 1) for index in range(grid)]
    axes.set_xticks(centres, labels, fontsize=7)
    axes.set_yticks(centres, labels, fontsize=7)
    axes.tick_params(length=0)
    for side in axes.spines.values():
        side.set_visible(False)
    axes.set_xlabel("Input patch column")
    axes.set_ylabel("Input patch row")
    axes.set_title("Position embedding similarity")
    figure.colorbar(shown, ax=axes, label="Cosine similarity", shrink=0.8)
    return figure


def similarity_picture(similarity: torch.Tensor, scale: int = 3, gap: int = 1) -> Image.Image:
    """Figure 7 (centre) as a plain picture, the mosaic of similarity_mosaic coloured -1..1 (viridis) on white
    gaps and enlarged `scale` times, so that a pixel clicked on it names a patch (patch_under)."""
    mosaic = similarity_mosaic(similarity, gap)
    colours = matplotlib.colormaps["viridis"](np.nan_to_num((mosaic + 1) / 2, nan=0.0), bytes=True)[..., :3]
    colours[np.isnan(mosaic)] = 255
    picture = Image.fromarray(colours)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def patch_under(x: float, y: float, grid_size: int, scale: int = 3, gap: int = 1) -> int | None:
    """The index (row by row) of the patch whose small map holds pixel (x, y) of similarity_picture; None in a gap
    or outside the picture."""
    cell = (grid_size + gap) * scale
    row, column = int(y // cell), int(x // cell)
    inside = (y % cell) < grid_size * scale and (x % cell) < grid_size * scale
    return row * grid_size + column if inside and 0 <= row < grid_size and 0 <= column < grid_size else None


def draw_patch_similarity(similarity: torch.Tensor, patch: int, size: int = 224) -> Image.Image:
    """One patch's row of Figure 7 (centre), `size` pixels wide: its position embedding's cosine similarity to
    every patch's (viridis, -1..1), with the patch itself outlined in white."""
    grid = _grid_size(similarity.shape[0])
    values = similarity[patch].detach().double().cpu().numpy().reshape(grid, grid)
    colours = matplotlib.colormaps["viridis"]((values + 1) / 2, bytes=True)[..., :3]
    picture = Image.fromarray(colours).resize((size, size), Image.Resampling.NEAREST)
    cell = size / grid
    row, column = divmod(patch, grid)
    box = (column * cell, row * cell, (column + 1) * cell - 1, (row + 1) * cell - 1)
    ImageDraw.Draw(picture).rectangle(box, outline="white", width=2)
    return picture


def equation_walk(
    patch_embedding, pixels: torch.Tensor, probabilities: dict[str, float], distances: torch.Tensor
) -> str:
    """Section 3.1's Eqs. 1-4 on one image, as a Markdown table: each step's tensor with its shape and the
    equation that makes it, from the (3, H, W) model input to the class probabilities. Eq. 1's tensors are computed
    here with the fp32 patch embedding (a fraction of the model's work); the encoder's layers are described by this
    image's mean attention distances, (layers, heads) from mean_attention_distance, the end by the probabilities
    the prediction returned. patch_embedding: model.py's PatchEmbedding holding the served weights."""
    config = patch_embedding.config
    size, patch, hidden = config.image_size, config.patch_size, config.hidden_dim
    grid = config.grid_size
    with torch.inference_mode():
        image = pixels[None].float().to(patch_embedding.projection.weight.device)
        patch_embeddings = patch_embedding.projection(image).flatten(2).transpose(1, 2)  # x_p E, (1, N, D)
        z0 = patch_embedding(image)  # Eq. 1 (eval mode: no dropout)
    layer_distances = torch.as_tensor(distances).mean(dim=1)  # (layers,) mean over the heads

    def numbers(tensor: torch.Tensor) -> str:
        tensor = tensor.detach().float()
        return f"mean {tensor.mean():+.3f}, std {tensor.std():.3f}"

    rows = [
        ("x", "the photo, resized and centre-cropped", f"{size}x{size}x{config.in_channels}", numbers(image)),
        (
            "x_p",
            f"N = HW/P^2 = {grid * grid} patches of P x P x C = {patch}x{patch}x{config.in_channels}",
            f"{grid * grid}x{patch * patch * config.in_channels}",
            "the same values as x, regrouped patch by patch",
        ),
        ("x_p E", "Eq. 1: every flattened patch times E", f"{grid * grid}x{hidden}", numbers(patch_embeddings)),
        ("z_0", "Eq. 1: [x_class; x_p E] + E_pos", f"{1 + grid * grid}x{hidden}", numbers(z0)),
        (
            f"z_1 ... z_{config.num_layers}",
            f"Eqs. 2-3 in each of the {config.num_layers} layers (the last one: the class token's output only)",
            f"{1 + grid * grid}x{hidden} each",
            "mean attention distance by layer: " + ", ".join(f"{d:.0f}" for d in layer_distances.tolist()) + " px",
        ),
        ("y", "Eq. 4: LN(z_L^0), the class token's final state", f"{hidden}", "the head's input"),
        (
            "logits",
            "the head: y W + b, then softmax",
            f"{len(probabilities)}",
            ", ".join(f"{name} {p:.3f}" for name, p in probabilities.items()),
        ),
    ]
    lines = ["| tensor | what makes it | shape | this photo |", "|---|---|---|---|"]
    lines += [f"| {name} | {what} | {shape} | {values} |" for name, what, shape, values in rows]
    return "\n".join(lines)


def draw_attention_distance(
    distances: torch.Tensor, reference: torch.Tensor | None = None, reference_label: str = "reference"
) -> Figure:
    """Figure 7 (right): mean attention distance in pixels against network depth, one dot per head, each head in
    its own colour; layers are numbered from 1. reference: another (layers, heads) set drawn behind in light grey
    (e.g. the average over the example photos, when `distances` is one photo's)."""
    distances = torch.as_tensor(distances).detach().double().cpu()
    if distances.ndim != 2:
        raise ValueError(f"distances must be (layers, heads), got shape {tuple(distances.shape)}")
    layers, heads = distances.shape
    depth = np.arange(1, layers + 1)
    # Fixed margins and plain markers: the page draws this for every photo, and a constrained layout and scatter
    # make extra passes over the text and the dots (BENCHMARKS.md, in a real browser: "Inside the ViT"). The top
    # margin is wide because the page lays the picture's label over its top tenth, where it would hide the
    # highest dots and the top of the axis.
    figure = _figure(5.5, 4.5, layout=None)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.87)
    axes = figure.add_subplot()
    dots = {"linestyle": "none", "marker": "o"}
    highest = float(distances.max())
    if reference is not None:
        reference = torch.as_tensor(reference).detach().double().cpu()
        if reference.shape != distances.shape:
            raise ValueError(f"reference has shape {tuple(reference.shape)}, distances {tuple(distances.shape)}")
        axes.plot(
            np.repeat(depth, heads), reference.flatten().numpy(), **dots, ms=4, color="0.82", label=reference_label
        )
        highest = max(highest, float(reference.max()))
    colours = matplotlib.colormaps["tab20"]
    for head in range(heads):
        axes.plot(depth, distances[:, head].numpy(), **dots, ms=3.5, color=colours(head % 20), label=f"Head {head + 1}")
    axes.set_xlabel("Network depth (layer)")
    axes.set_ylabel("Mean attention distance (pixels)")
    axes.set_xticks(depth if layers <= 12 else depth[::2])
    axes.set_ylim(0, highest * 1.05 or 1)
    axes.legend(fontsize=6, ncol=2, loc="lower right", markerscale=0.8)
    return figure


def draw_head_maps(class_token_attention: torch.Tensor, image: Image.Image, gap: int = 4) -> Image.Image:
    """One layer's attention from the class token to the patches, one overlay per head, row by row in head order
    (a grid about as wide as it is tall). class_token_attention: (heads, N), a layer's map (heads, 1+N, 1+N)
    as `attention[:, 0, 1:]`. Each head's map is rescaled to [0, 1] on its own: the point is where it looks."""
    if class_token_attention.ndim != 2:
        raise ValueError(
            f"class_token_attention must be (heads, N), a layer's attention[:, 0, 1:], got shape "
            f"{tuple(class_token_attention.shape)}"
        )
    grid = _grid_size(class_token_attention.shape[-1])
    overlays = [attention_overlay(image, head.reshape(grid, grid)) for head in class_token_attention]
    return _tile(overlays, math.ceil(math.sqrt(len(overlays))), gap)
