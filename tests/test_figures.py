"""figures.py: each analysis of Figures 6 and 7 agrees with a plain computation on maps with planted structure."""

import io
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from figures import (
    attention_rollout,
    draw_attention_distance,
    draw_filters,
    draw_head_maps,
    draw_position_similarity,
    draw_rollout,
    embedding_filters,
    mean_attention_distance,
    patch_under,
    position_embedding_similarity,
    similarity_picture,
)
from model import ViT, ViTConfig


def random_attentions(layers: int, batch: int, heads: int, tokens: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).mul(2).softmax(dim=-1)
        for _ in range(layers)
    ]


def one_hot_attention(targets_per_head: list[dict[int, int]], tokens: int) -> torch.Tensor:
    """(1, heads, tokens, tokens): in head h token i attends only to targets_per_head[h].get(i, i)."""
    attention = torch.zeros(1, len(targets_per_head), tokens, tokens, dtype=torch.float64)
    for head, targets in enumerate(targets_per_head):
        for query in range(tokens):
            attention[0, head, query, targets.get(query, query)] = 1.0
    return attention


def matrix_product(left: list[list[float]], right: list[list[float]]) -> list[list[float]]:
    size = len(left)
    return [[sum(left[i][m] * right[m][j] for m in range(size)) for j in range(size)] for i in range(size)]


def rollout_by_loop(attentions: list[torch.Tensor]) -> list[list[float]]:
    """Abnar and Zuidema's rollout, one image and one matrix at a time, in plain Python."""
    batch, heads, tokens, _ = attentions[0].shape
    rows = []
    for image in range(batch):
        rollout = [[float(i == j) for j in range(tokens)] for i in range(tokens)]
        for attention in attentions:
            maps = attention[image].tolist()
            residual = [
                [0.5 * sum(maps[h][i][j] for h in range(heads)) / heads + 0.5 * (i == j) for j in range(tokens)]
                for i in range(tokens)
            ]
            rollout = matrix_product(residual, rollout)
        rows.append(rollout[0][1:])
    return rows


def distance_by_loop(attentions: list[torch.Tensor], patch_size: float) -> list[list[float]]:
    """Attention-weighted distance between patch centres, class token dropped and weights renormalised."""
    batch, heads, tokens, _ = attentions[0].shape
    grid = math.isqrt(tokens - 1)
    centres = [((p // grid + 0.5) * patch_size, (p % grid + 0.5) * patch_size) for p in range(tokens - 1)]
    table = []
    for attention in attentions:
        row = []
        for head in range(heads):
            total = 0.0
            for image in range(batch):
                for query in range(tokens - 1):
                    weights = attention[image, head, 1 + query, 1:].tolist()
                    total += sum(
                        w / sum(weights) * math.dist(centres[query], centres[key]) for key, w in enumerate(weights)
                    )
            row.append(total / (batch * (tokens - 1)))
        table.append(row)
    return table


def brightest_block(image: Image.Image, block: int) -> tuple[int, int]:
    """(row, column) of the block x block square with the highest mean brightness."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    rows, columns = grey.shape[0] // block, grey.shape[1] // block
    means = grey[: rows * block, : columns * block].reshape(rows, block, columns, block).mean(axis=(1, 3))
    return tuple(int(i) for i in np.unravel_index(means.argmax(), means.shape))


# Figure 6: attention rollout


def test_rollout_matches_a_loop_over_matrices():
    attentions = random_attentions(layers=3, batch=2, heads=2, tokens=5)
    rollout = attention_rollout(attentions)
    assert rollout.shape == (2, 4)
    torch.testing.assert_close(rollout, torch.tensor(rollout_by_loop(attentions), dtype=torch.float64))


def test_rollout_worked_by_hand_averages_heads_and_multiplies_the_first_layer_last():
    # Layer 1: the class token attends to patch 1 in head 1 and to patch 3 in head 2; patches attend to themselves.
    # Layer 2: the class token attends to patch 2, patch 2 to patch 4. With Â = 0.5 A + 0.5 I:
    # row 0 of Â_2 Â_1 = 0.5 Â_1[0] + 0.5 Â_1[2] = 0.5 (0.5 e0 + 0.25 e1 + 0.25 e3) + 0.5 e2.
    first = one_hot_attention([{0: 1}, {0: 3}], tokens=5)
    second = one_hot_attention([{0: 2, 2: 4}, {0: 2, 2: 4}], tokens=5)
    rollout = attention_rollout([first, second])
    torch.testing.assert_close(rollout, torch.tensor([[0.125, 0.5, 0.125, 0.0]], dtype=torch.float64))


def test_rollout_of_layers_that_attend_only_to_themselves_leaves_the_class_token_alone():
    attentions = [one_hot_attention([{}, {}], tokens=10)] * 3
    torch.testing.assert_close(attention_rollout(attentions), torch.zeros(1, 9, dtype=torch.float64))


def test_rollout_refuses_maps_that_do_not_fit_together():
    with pytest.raises(ValueError, match="non-empty list"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 5\)"):
        attention_rollout([torch.rand(1, 2, 5, 5), torch.rand(1, 2, 4, 4)])
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        attention_rollout([torch.rand(2, 5, 5)])


# Figure 7 (right): mean attention distance


def test_mean_distance_matches_a_loop_over_patch_centres():
    attentions = random_attentions(layers=2, batch=2, heads=3, tokens=10, seed=1)
    distances = mean_attention_distance(attentions, patch_size=16)
    assert distances.shape == (2, 3)
    torch.testing.assert_close(distances, torch.tensor(distance_by_loop(attentions, 16), dtype=torch.float64))


def planted_grid_attention(class_token_weight: float) -> torch.Tensor:
    """3x3 patches, three heads: each patch attends to itself, to its right neighbour (the left one in the last
    column) and to a diagonal neighbour (down a row, or up from the last; right a column, or left from the last).
    Every patch query gives class_token_weight to the class token; the class token's query attends to a corner."""
    grid, tokens = 3, 10
    attention = torch.zeros(1, 3, tokens, tokens, dtype=torch.float64)
    for patch in range(grid * grid):
        row, column = divmod(patch, grid)
        right = patch + 1 if column < grid - 1 else patch - 1
        diagonal = patch + (grid if row < grid - 1 else -grid) + (1 if column < grid - 1 else -1)
        for head, key in enumerate((patch, right, diagonal)):
            attention[0, head, 1 + patch, 1 + key] = 1 - class_token_weight
            attention[0, head, 1 + patch, 0] = class_token_weight
    attention[0, :, 0, 1 + grid * grid - 1] = 1.0
    return attention


@pytest.mark.parametrize("class_token_weight", [0.0, 0.9])
def test_mean_distance_of_planted_heads_is_known_by_hand_whatever_goes_to_the_class_token(class_token_weight):
    distances = mean_attention_distance([planted_grid_attention(class_token_weight)], patch_size=16)
    torch.testing.assert_close(distances, torch.tensor([[0.0, 16.0, 16 * math.sqrt(2)]], dtype=torch.float64))


def test_mean_distance_averages_over_layers_images_and_queries_separately_per_layer():
    near, far = planted_grid_attention(0.0), planted_grid_attention(0.5)
    far[:, 0] = far[:, 2]  # head 1 of this map looks diagonally too
    distances = mean_attention_distance([torch.cat([near, far]), torch.cat([far, far])], patch_size=8)
    diagonal = 8 * math.sqrt(2)
    expected = [[diagonal / 2, 8.0, diagonal], [diagonal, 8.0, diagonal]]
    torch.testing.assert_close(distances, torch.tensor(expected, dtype=torch.float64))


def test_a_query_whose_patch_weights_all_underflow_counts_as_no_distance_not_nan():
    """A query giving all its weight to the class token in float32 (its patch weights rounded to exact zeros) has
    no distance to weight: 0 pixels, and the other queries' mean untouched, where 0/0 would turn the head's into NaN."""
    attention = planted_grid_attention(0.0).float()
    attention[0, :, 1, 1:] = 0  # the first patch's query: every weight on the class token
    attention[0, :, 1, 0] = 1
    distances = mean_attention_distance([attention], patch_size=16)
    reference = mean_attention_distance([planted_grid_attention(0.0).float()], patch_size=16)
    torch.testing.assert_close(distances, reference * 8 / 9)  # 8 of the 9 queries keep their distance


def test_mean_distance_needs_a_square_grid_and_a_positive_patch_size():
    with pytest.raises(ValueError, match="8 patches"):
        mean_attention_distance(random_attentions(1, 1, 2, tokens=9), patch_size=16)
    with pytest.raises(ValueError, match="patch_size"):
        mean_attention_distance(random_attentions(1, 1, 2, tokens=10), patch_size=0)


# Figure 7 (centre): position embedding similarity


def test_position_similarity_of_one_hot_embeddings_is_the_identity_without_the_class_token():
    patches = torch.eye(9, 12) * torch.arange(1, 10).unsqueeze(1)  # orthogonal, of different lengths
    class_token = 5 * torch.eye(1, 12)  # the direction of patch 1: kept, it would break the identity
    embedding = torch.cat([class_token, patches]).unsqueeze(0)  # (1, 1+N, D) as model.py holds it
    similarity = position_embedding_similarity(nn.Parameter(embedding))
    torch.testing.assert_close(similarity, torch.eye(9))


def test_position_similarity_is_the_cosine_and_takes_the_two_dimensional_form():
    direction, orthogonal = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, -1.0, 0.0])
    embedding = torch.stack([orthogonal, direction, 3 * direction, -direction, orthogonal])  # class token first
    expected = torch.tensor([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(position_embedding_similarity(embedding), expected)
    torch.testing.assert_close(position_embedding_similarity(embedding[None]), expected)
    with pytest.raises(ValueError, match=r"\(2, 5, 3\)"):
        position_embedding_similarity(torch.stack([embedding, embedding]))


# Figure 7 (left): embedding filters


def planted_filter_bank(filters: int = 300, seed: int = 0):
    """Filters (D, 3, 4, 4) spread along two orthonormal directions, variances 25 and 1, around a large mean."""
    generator = torch.Generator().manual_seed(seed)
    directions, _ = torch.linalg.qr(torch.randn(48, 2, generator=generator, dtype=torch.float64))
    first, second = directions.T
    coefficients = torch.randn(filters, 2, generator=generator, dtype=torch.float64) * torch.tensor([5.0, 1.0])
    mean = 10 * torch.randn(48, generator=generator, dtype=torch.float64)
    noise = 1e-3 * torch.randn(filters, 48, generator=generator, dtype=torch.float64)
    bank = coefficients @ directions.T + mean + noise
    return bank.reshape(filters, 3, 4, 4).float(), first, second


def test_embedding_filters_recover_planted_directions_in_order_of_variance():
    weight, first, second = planted_filter_bank()
    components = embedding_filters(weight, k=5)
    assert components.shape == (5, 3, 4, 4)
    flat = components.flatten(1).double()
    assert abs(flat[0] @ first) > 0.999 and abs(flat[1] @ second) > 0.999
    torch.testing.assert_close(flat @ flat.T, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_embedding_filters_have_a_deterministic_sign():
    weight, _, _ = planted_filter_bank(seed=3)
    components = embedding_filters(weight, k=4).flatten(1)
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    assert (largest > 0).all()
    torch.testing.assert_close(embedding_filters(-weight, k=4).flatten(1), components)


def test_embedding_filters_clamp_k_to_the_components_that_exist_and_refuse_k_below_one():
    assert embedding_filters(torch.randn(100, 3, 2, 2), k=28).shape == (12, 3, 2, 2)  # 12 = C*P*P < D
    assert embedding_filters(torch.randn(5, 3, 4, 4), k=28).shape == (5, 3, 4, 4)  # D < C*P*P
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"got {k}"):
            embedding_filters(torch.randn(5, 3, 4, 4), k=k)
    with pytest.raises(ValueError, match=r"\(5, 48\)"):
        embedding_filters(torch.randn(5, 48))


# Drawings


def test_draw_rollout_keeps_the_image_size_and_lights_the_planted_patch():
    rollout = torch.full((16,), 0.01)
    rollout[6] = 0.5  # row 1, column 2 of the 4x4 grid
    image = Image.new("RGB", (32, 32), (200, 180, 160))
    drawn = draw_rollout(image, rollout)
    assert drawn.mode == "RGB" and drawn.size == (32, 32)
    assert brightest_block(drawn, 8) == (1, 2)
    assert np.asarray(drawn).max() > 150 and np.asarray(drawn)[:8, :8].max() < 30  # far patches are masked out
    with pytest.raises(ValueError, match="15 patches"):
        draw_rollout(image, torch.rand(15))
    with pytest.raises(ValueError, match=r"\(1, 16\)"):
        draw_rollout(image, rollout[None])


def test_draw_filters_lays_out_28_tiles_in_four_rows_of_seven_each_spanning_the_full_range():
    components = torch.randn(28, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    components[9] = 0
    components[9, 0, 1, 2] = 1  # tile row 1, column 2: one pure red pixel on black
    sheet = draw_filters(components, scale=4, gap=4)
    assert sheet.mode == "RGB" and sheet.size == (7 * 16 + 6 * 4, 4 * 16 + 3 * 4)
    pixels = np.asarray(sheet)
    for index in range(28):
        row, column = divmod(index, 7)
        tile = pixels[row * 20 : row * 20 + 16, column * 20 : column * 20 + 16]
        assert tile.min() == 0 and tile.max() == 255
    planted = pixels[20:36, 40:56]
    assert (planted[4:8, 8:12] == [255, 0, 0]).all() and planted.sum() == 255 * 16


def test_draw_position_similarity_is_one_grid_of_grids_with_each_patch_brightest_at_its_own_place():
    grid = 4
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    distance = np.hypot(rows[:, None] - rows[None], columns[:, None] - columns[None])
    figure = draw_position_similarity(torch.tensor(np.exp(-distance)))
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Input patch column" and axes.get_ylabel() == "Input patch row"
    assert len(axes.images) == 1
    mosaic = np.ma.filled(axes.images[0].get_array(), np.nan)
    assert mosaic.shape == (grid * (grid + 1) - 1,) * 2
    for patch in range(grid * grid):
        row, column = divmod(patch, grid)
        small_map = mosaic[row * (grid + 1) : row * (grid + 1) + grid, column * (grid + 1) : column * (grid + 1) + grid]
        assert np.unravel_index(np.argmax(small_map), small_map.shape) == (row, column)
    assert np.isnan(mosaic[grid, :]).all() and np.isnan(mosaic[:, grid]).all()  # gaps between the small maps


def test_a_click_on_the_similarity_picture_names_the_patch_whose_map_it_lands_in():
    """On the picture each patch's small map is brightest at the patch's own place (similarity 1 with itself, -1
    with the rest), so the bright pixel in the map under a click tells which patch the map belongs to: row by row,
    not column by column. Clicks in the white gaps or off the picture name none."""
    grid, scale, gap = 4, 3, 1
    picture = np.asarray(similarity_picture(2 * torch.eye(grid * grid) - 1, scale, gap)).sum(axis=2)
    cell = (grid + gap) * scale
    for y in range(picture.shape[0]):
        for x in range(picture.shape[1]):
            patch = patch_under(x + 0.5, y + 0.5, grid, scale, gap)
            if patch is None:
                assert picture[y, x] == 3 * 255  # a white gap
                continue
            top, left = y // cell * cell, x // cell * cell
            small_map = picture[top : top + grid * scale, left : left + grid * scale]
            bright_row, bright_column = np.unravel_index(small_map.argmax(), small_map.shape)
            assert patch == bright_row // scale * grid + bright_column // scale
    assert patch_under(picture.shape[1] + 1, 1, grid, scale, gap) is None
    assert patch_under(-1, 1, grid, scale, gap) is None


def test_draw_position_similarity_renders_a_14_by_14_grid():
    figure = draw_position_similarity(torch.eye(196))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert Image.open(buffer).size[0] > 0 and len(figure.axes[0].images) == 1


def test_draw_attention_distance_puts_one_dot_per_head_at_its_depth():
    distances = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    figure = draw_attention_distance(distances, reference=distances + 5, reference_label="examples")
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Network depth (layer)" and "pixels" in axes.get_ylabel()
    by_label = {dots.get_label(): dots for dots in axes.lines}
    assert set(by_label) == {"examples", "Head 1", "Head 2"}
    assert all(dots.get_linestyle() == "None" and dots.get_marker() == "o" for dots in axes.lines)
    np.testing.assert_allclose(by_label["Head 1"].get_xydata(), [[1, 10], [2, 30], [3, 50]])
    np.testing.assert_allclose(by_label["Head 2"].get_xydata(), [[1, 20], [2, 40], [3, 60]])
    assert sorted(map(tuple, by_label["examples"].get_xydata())) == [
        (1, 15), (1, 25), (2, 35), (2, 45), (3, 55), (3, 65)
    ]  # fmt: skip
    assert axes.lines[0] is by_label["examples"]  # drawn first, behind the heads
    assert axes.get_ylim()[1] >= 65
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        draw_attention_distance(distances, reference=distances[:2])


@pytest.mark.parametrize("largest", [1.0, 120.0, 310.0])  # up to the diagonal of a 224 px input
@pytest.mark.parametrize("layers, heads", [(12, 12), (24, 16), (32, 16)])  # Table 1: ViT-Base, Large, Huge
def test_the_attention_distance_figure_keeps_its_labels_and_legend_on_the_canvas(largest, layers, heads):
    """Its margins are fixed, not laid out for each figure: wide tick labels and every head's legend must fit."""
    distances = torch.linspace(0, largest, layers * heads, dtype=torch.float64).reshape(layers, heads)
    figure = draw_attention_distance(distances, reference=distances.flip(0), reference_label="examples")
    renderer = figure.canvas.get_renderer()
    drawn = figure.get_tightbbox(renderer)  # in inches, everything drawn
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= figure.get_figwidth() and drawn.y1 <= figure.get_figheight()


def test_draw_head_maps_shows_each_heads_planted_patch_brightest():
    tokens, planted = 17, [5, 0, 10, 15]
    attention = torch.full((4, tokens, tokens), 0.01)
    for head, patch in enumerate(planted):
        attention[head, 0, 1 + patch] = 1.0
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    sheet = draw_head_maps(attention[:, 0, 1:], image, gap=4)
    assert sheet.mode == "RGB" and sheet.size == (68, 68)  # 2x2 tiles of 32 px with 4 px gaps
    for head, patch in enumerate(planted):
        row, column = divmod(head, 2)
        tile = sheet.crop((column * 36, row * 36, column * 36 + 32, row * 36 + 32))
        assert brightest_block(tile, 8) == divmod(patch, 4)
    with pytest.raises(ValueError, match=r"\(heads, N\), a layer's attention\[:, 0, 1:\], got shape \(4, 17, 17\)"):
        draw_head_maps(attention, image)


# A model.py ViT end to end


@pytest.fixture(scope="module")
def tiny_vit_attentions():
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_layers=2, hidden_dim=32, mlp_dim=64, num_heads=4, num_classes=3)
    vit = ViT(config).eval()
    maps = []
    with torch.inference_mode():
        vit.forward_features(torch.randn(2, 3, 32, 32), maps)
    return vit, maps


def test_the_analyses_run_on_a_tiny_vit(tiny_vit_attentions):
    vit, attentions = tiny_vit_attentions
    rollout = attention_rollout(attentions)
    torch.testing.assert_close(rollout, torch.tensor(rollout_by_loop(attentions)))
    distances = mean_attention_distance(attentions, vit.config.patch_size)
    torch.testing.assert_close(distances, torch.tensor(distance_by_loop(attentions, 8)))
    similarity = position_embedding_similarity(vit.patch_embedding.position_embedding)
    assert similarity.shape == (16, 16)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(16))
    components = embedding_filters(vit.patch_embedding.projection.weight)
    assert components.shape == (28, 3, 8, 8)
    image = Image.new("RGB", (32, 32), "white")
    assert draw_rollout(image, rollout[0]).size == (32, 32)
    assert draw_head_maps(attentions[-1][0, :, 0, 1:], image).size == (2 * 32 + 4, 2 * 32 + 4)
    assert draw_filters(components).size == (7 * 32 + 6 * 4, 4 * 32 + 3 * 4)
    assert isinstance(draw_attention_distance(distances), Figure)
